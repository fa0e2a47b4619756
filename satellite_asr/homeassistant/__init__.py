"""The household's names from Home Assistant, for biasing speech recognition."""
