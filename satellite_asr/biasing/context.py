"""What an engine is biased with: a client's own words and the household's names, as one context text.

Every protocol's biasing fields (a WebSocket `context`, Wyoming `transcript_names` and
`transcript_terms`, OpenAI's `prompt` and `keywords`) and the names read from Home Assistant end up
here, in the order an engine that must cut its context keeps best.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

NAME_SEPARATOR = ", "
"""Between names in context text: Whisper reads a comma list as a list of proper names."""

MAX_NAME_CHARS = 100
"""A longer "name" is not one a person says: a client's is not matched, a home's is left out (a
friendly name of megabytes would be tokenized at every decode that takes the home's names as
context). It also bounds what keying a name costs (that grows with the square of its length)."""

MAX_CLIENT_TERMS = 300
"""Most names and terms a client may give one session (Wyoming `transcript_names` and
`transcript_terms`, OpenAI `keywords`). Their characters count in `max_context_chars`, but each is
also compared with the words of every partial and final (the correction towards names), and that
cost follows their number: 300 made-up two-word names on top of the 196-name evaluation home took
the correction of its commands from a median 8 to 14 ms, 1000 to 31 ms (one core, a busy machine)."""


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""Half of a UTF-16 pair: JSON can escape one (`"\\udcff"`), Unicode text cannot hold it."""


def sayable(name: str) -> bool:
    """Whether `name` has a letter or digit (any script): "...", "!!!" or an emoji names nothing, and
    as Whisper's whole prompt, punctuation can make it write only that ("... ... ..." for a command)."""
    return any(character.isalnum() for character in name)


def whole_characters(text: str) -> str:
    """`text` with each lone surrogate as U+FFFD: no engine's tokenizer takes one, and a name or
    context holding one would fail every decode of its session."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def client_terms(values: Iterable[str]) -> list[str]:
    """A client's names or terms as a session takes them: each stripped, those not `sayable` dropped
    (`SessionOptions` makes them of `whole_characters`, so a protocol can echo the client's own)."""
    return [value.strip() for value in values if sayable(value)]


def biasing_context(home_names: Sequence[str], client_terms: Sequence[str] = (), client_context: str = "") -> str:
    """The context text an engine decodes with: the client's own words first, then the home's names.

    A client's free text (a WebSocket `context`) and terms (Wyoming `transcript_names` /
    `transcript_terms`) are about this very request, so they come first: an engine that must cut
    context keeps the start. Names the client already gave are not repeated. The text is made of
    `whole_characters`.
    """
    terms = [" ".join(term.split()) for term in client_terms if term.strip()]
    given = {term.casefold() for term in terms}
    listed = NAME_SEPARATOR.join([*terms, *(name for name in home_names if name.casefold() not in given)])
    text = client_context.strip()
    joined = text + _after_text(text) + listed if text and listed else text or listed
    return whole_characters(joined)


def _after_text(text: str) -> str:
    """What joins a client's text to the names after it: a sentence break unless it has one."""
    return " " if text[-1] in ".!?,;:" else ". "


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
        if not term.strip():
            continue  # `biasing_context` leaves it out: it costs nothing and is not kept
        joint = NAME_SEPARATOR if kept else _after_text(text) if text else ""
        cost = len(joint) + len(" ".join(term.split()))
        if used + cost > limit:
            break
        used += cost
        kept.append(term)
    return text, kept
