"""The household's names as Home Assistant knows them, ranked for biasing speech recognition.

An engine can take only so much context (Whisper: a couple of hundred prompt tokens), and a home
can have hundreds of entities, so the names are ordered by how likely a person says them and how
much they help, then capped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from satellite_asr.biasing.context import MAX_NAME_CHARS, sayable, whole_characters


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
    Assistant's order. A name longer than `MAX_NAME_CHARS`, or not `sayable`, is left out; names
    are of `whole_characters`.
    """
    chosen: list[tuple[int, tuple[int, int], int, str]] = []

    def add(group: int, name: str) -> None:
        name = whole_characters(" ".join(name.split()))
        if len(name) <= MAX_NAME_CHARS and sayable(name):
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
