"""Ranking the household's names and building the context an engine decodes with."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from satellite_asr.biasing.context import biasing_context, fitted_biasing
from satellite_asr.homeassistant.names import EntityNames, HomeNames, Place, rank_names

HOME = HomeNames(
    entities=(
        EntityNames("light.ravensworth", "Ravensworth chandelier"),
        EntityNames("vacuum.robot", "Robot vacuum", ("Zebedee",)),
        EntityNames("light.kitchen", "Kitchen lights"),
        EntityNames("light.kitchen_2", "kitchen  LIGHTS"),
    ),
    areas=(Place("Marigold room"), Place("Small lounge", ("The Snug",))),
    floors=(Place("Belvedere floor", ("Upstairs",)),),
)


def test_areas_floors_and_aliases_first_then_entities_shortest_first() -> None:
    assert rank_names(HOME, 100) == [
        "Zebedee",
        "Upstairs",
        "The Snug",
        "Small lounge",
        "Marigold room",
        "Belvedere floor",
        "Robot vacuum",
        "Kitchen lights",
        "Ravensworth chandelier",
    ]


def test_duplicates_differing_in_case_or_spaces_count_once() -> None:
    assert [name for name in rank_names(HOME, 100) if name.casefold() == "kitchen lights"] == ["Kitchen lights"]


def test_names_with_no_letter_or_digit_are_left_out() -> None:
    """A Home Assistant name of punctuation or an emoji names nothing, and in a prompt can take the
    transcript (tests/test_wyoming.py); one in another script is a name."""
    odd = dataclasses.replace(
        HOME, entities=(EntityNames("light.a", "..."), EntityNames("light.b", "\U0001f4a1"), *HOME.entities)
    )
    assert rank_names(odd, 100) == rank_names(HOME, 100)
    assert rank_names(HomeNames(areas=(Place("Кухня"), Place("!!!"))), 100) == ["Кухня"]


def test_a_lone_surrogate_in_a_name_becomes_the_replacement_character() -> None:
    """Home Assistant's JSON can escape half a UTF-16 pair, which no engine's tokenizer takes."""
    assert rank_names(HomeNames(areas=(Place("Kitchen \udcff lamp"),)), 100) == ["Kitchen \ufffd lamp"]


def test_the_cap_keeps_the_best_ranked() -> None:
    assert rank_names(HOME, 3) == ["Zebedee", "Upstairs", "The Snug"]
    assert rank_names(HOME, 0) == []


def test_entities_not_exposed_are_left_out_of_the_json_home() -> None:
    home = HomeNames.from_json(
        {
            "entities": [
                {"entity_id": "light.a", "name": "Aoife's nightlight", "aliases": ["Night night"]},
                {"entity_id": "sensor.b", "name": "Router uptime", "aliases": [], "exposed": False},
            ],
            "areas": [{"id": "m", "name": "Marigold room", "aliases": []}],
        }
    )
    assert rank_names(home, 10) == ["Night night", "Marigold room", "Aoife's nightlight"]


def test_context_puts_the_clients_own_words_first_without_repeating_names() -> None:
    names = ["Zebedee", "Marigold room", "Calloway blinds"]
    assert biasing_context(names) == "Zebedee, Marigold room, Calloway blinds"
    context = biasing_context(names, ["calloway  blinds", "Okonkwo"], "Kitchen assistant.")
    assert context == "Kitchen assistant. calloway blinds, Okonkwo, Zebedee, Marigold room"
    assert biasing_context(["Zebedee"], [], "Shopping list") == "Shopping list. Zebedee"
    assert biasing_context([], [], "Shopping list") == "Shopping list"
    assert biasing_context([]) == "" and biasing_context([], [" "], "  ") == ""


def test_a_clients_biasing_over_the_limit_keeps_the_text_first_then_whole_names() -> None:
    names = ["Okonkwo", "Marigold room", "Calloway blinds"]
    assert fitted_biasing("Lights.", names, 31) == ("Lights.", ["Okonkwo", "Marigold room"])
    assert biasing_context((), ["Okonkwo", "Marigold room"], "Lights.") == "Lights. Okonkwo, Marigold room"
    assert fitted_biasing("Lights.", names, 30) == ("Lights.", ["Okonkwo", "Marigold room"]), "exactly the limit"
    assert fitted_biasing("Lights.", names, 29) == ("Lights.", ["Okonkwo"]), "no name cut in half"
    assert fitted_biasing("Lights", names, 30) == ("Lights", ["Okonkwo", "Marigold room"]), "'. ' after the text"
    assert fitted_biasing("Lights.", [" ", "Okonkwo"], 15) == ("Lights.", ["Okonkwo"]), "a blank term is left out"
    assert fitted_biasing("Shopping list", names, 8) == ("Shopping", [])
    assert fitted_biasing("", names, 7) == ("", ["Okonkwo"])


terms = st.lists(st.text(min_size=1), max_size=30)


@given(st.text(), terms, st.integers(0, 200))
def test_fitted_biasing_is_the_longest_start_that_fits(text: str, client_terms: list[str], limit: int) -> None:
    kept_text, kept = fitted_biasing(text, client_terms, limit)
    assert len(biasing_context((), kept, kept_text)) <= limit
    given = [term for term in client_terms if term.strip()]
    assert text.strip().startswith(kept_text) and kept == given[: len(kept)]
    if kept_text != text.strip():
        assert len(text.strip()) > limit and kept == [], "the text is cut only when it alone is too long"
    elif len(kept) < len(given):
        one_more = biasing_context((), [*kept, given[len(kept)]], kept_text)
        assert len(one_more) > limit, "the next term did not fit"
