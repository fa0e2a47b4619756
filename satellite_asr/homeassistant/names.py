"""The household's names as Home Assistant knows them, ranked for biasing speech recognition.

An engine can take only so much context (Whisper: a couple of hundred prompt tokens), and a home
can have hundreds of entities, so the names are ordered by how likely a person says them and how
much they help, then capped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAME_SEPARATOR = ", "
"""Between names in context text: Whisper reads a comma list as a list of proper names."""


@dataclass(frozen=True)
class Place:
    """An area or a floor: what it is called and what else people call it."""

    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class EntityNames:
    """An entity exposed to Assist: its friendly name and its registry aliases."""

    entity_id: str
    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class HomeNames:
    """Everything named in one Home Assistant, as read from its registries and states."""

    entities: tuple[EntityNames, ...] = ()
    areas: tuple[Place, ...] = ()
    floors: tuple[Place, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HomeNames:
        """The plain-JSON form (`tests/fixtures/names/home.json`): floors, areas, entities lists.

        Entities marked `"exposed": false` are left out, as the client leaves out what Home
        Assistant does not expose to Assist (Assist cannot act on them).
        """

        def places(items: Iterable[Mapping[str, Any]]) -> tuple[Place, ...]:
            return tuple(Place(item["name"], tuple(item.get("aliases", ()))) for item in items)

        entities = tuple(
            EntityNames(item["entity_id"], item["name"], tuple(item.get("aliases", ())))
            for item in data.get("entities", ())
            if item.get("exposed", True)
        )
        return cls(entities, places(data.get("areas", ())), places(data.get("floors", ())))


def _shortness(name: str) -> tuple[int, int]:
    return (len(name.split()), len(name))


def rank_names(home: HomeNames, limit: int) -> list[str]:
    """At most `limit` distinct names (case-insensitively), the most useful first.

    Order: areas, floors and every alias (a name someone chose to say), then the friendly names of
    the entities exposed to Assist; within each group shorter names first, then in Home
    Assistant's order.
    """
    chosen: list[tuple[int, tuple[int, int], int, str]] = []

    def add(group: int, name: str) -> None:
        name = " ".join(name.split())
        if name:
            chosen.append((group, _shortness(name), len(chosen), name))

    for place in (*home.areas, *home.floors):
        add(0, place.name)
        for alias in place.aliases:
            add(0, alias)
    for entity in home.entities:
        for alias in entity.aliases:
            add(0, alias)
        add(1, entity.name)
    ranked: list[str] = []
    seen: set[str] = set()
    for *_, name in sorted(chosen):
        if name.casefold() not in seen and len(ranked) < limit:
            seen.add(name.casefold())
            ranked.append(name)
    return ranked


def biasing_context(home_names: Sequence[str], client_terms: Sequence[str] = (), client_context: str = "") -> str:
    """The context text an engine decodes with: the client's own words first, then the home's names.

    A client's free text (a WebSocket `context`) and terms (Wyoming `transcript_names` /
    `transcript_terms`) are about this very request, so they come first: an engine that must cut
    context keeps the start. Names the client already gave are not repeated.
    """
    terms = [" ".join(term.split()) for term in client_terms if term.strip()]
    given = {term.casefold() for term in terms}
    listed = NAME_SEPARATOR.join([*terms, *(name for name in home_names if name.casefold() not in given)])
    text = client_context.strip()
    if not text or not listed:
        return text or listed
    return text + (" " if text[-1] in ".!?,;:" else ". ") + listed


def fitted_biasing(client_context: str, client_terms: Sequence[str], limit: int) -> tuple[str, list[str]]:
    """The longest start of a client's biasing whose `biasing_context` holds at most `limit` characters.

    The text comes first, cut if it alone is too long; then whole terms are kept in order (a name cut
    in half biases towards a wrong one): the engine's order, so what a client put first it keeps.
    """
    text = client_context.strip()
    if len(text) > limit:
        return text[:limit].rstrip(), []
    used = len(text)
    kept: list[str] = []
    for term in client_terms:
        separator = len(NAME_SEPARATOR) if text or kept else 0  # ", " between terms, at most ". " after the text
        cost = separator + len(" ".join(term.split()))
        if used + cost > limit:
            break
        used += cost
        kept.append(term)
    return text, kept
