"""The command-line clients."""


class OutputClosed(Exception):
    """What reads a client's output went away (`| head` had its lines): nothing more is worth doing."""
