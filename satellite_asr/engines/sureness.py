"""How sure an engine was of each word it wrote: each token's text found in the transcript, with
its log-probability (`Transcript.token_spans`), which the names' correction reads. One way for
every engine: Whisper's tokens, Qwen3-ASR's in process and over HTTP."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from satellite_asr.engines.base import TokenSpan

PIECE_LOOKBACK_TOKENS = 4
"""Tokens decoded before each one to find its text: a character is at most 4 bytes, so the tokens
that began it are among them."""


def token_pieces(ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each token adds to `decode(ids)`. A token that ends inside a character writes ""
    and its text (a space before the character too) goes to the token that completes it, so both
    share that character's span (`spans_of`).

    Each token is decoded with only the few before it (`PIECE_LOOKBACK_TOKENS`), not with the
    whole output so far: a 512-token output costs milliseconds, not tens.
    """
    pieces = []
    whole_until = 0  # the end of the last token that did not end inside a character
    for end in range(1, len(ids) + 1):
        first = max(0, whole_until - PIECE_LOOKBACK_TOKENS)
        after = decode(list(ids[first:end]))
        if after.endswith("\ufffd"):  # the start of a character not yet whole
            pieces.append("")
            continue
        before = decode(list(ids[first:whole_until]))
        whole_until = end
        # a piece that does not extend the text before it cannot spell the output: `measured` drops them all
        pieces.append(after[len(before) :] if after.startswith(before) else "\ufffd")
    return pieces


def measured(text: str, pieces: Sequence[str], logprobs: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Where each token's piece of `text` ends, and its log-probability; both empty unless the
    pieces spell `text` (a stop token's own text after it is allowed) and each log-probability is
    a number: then nothing is known of how sure the engine was."""
    if not "".join(pieces).startswith(text) or len(logprobs) != len(pieces):
        return (), ()
    if not all(math.isfinite(logprob) for logprob in logprobs):
        return (), ()
    ends, end = [], 0
    for piece in pieces:
        end += len(piece)
        ends.append(min(end, len(text)))
    return tuple(ends), tuple(logprobs)


def spans_of(token_ends: Sequence[int], logprobs: Sequence[float], offset: int = 0) -> list[TokenSpan]:
    """Each token as a span of a text where the measured one (`measured`) starts at `offset`. A
    token that wrote only the first bytes of a character shares the span of the token that
    completes it: its choice of character counts; a stop token after the text has none."""
    found: list[TokenSpan] = []
    held: list[float] = []
    start = 0
    for end, logprob in zip(token_ends, logprobs, strict=True):
        held.append(logprob)
        if end > start:
            found.extend(TokenSpan(offset + start, offset + end, each) for each in held)
            held = []
        start = max(start, end)
    return found


def transcript_spans(raw: str, text: str, raw_spans: Sequence[TokenSpan]) -> tuple[TokenSpan, ...]:
    """Spans of an engine's raw output moved onto its transcript, which ends where the raw output's
    words end (the raw output less a header, or spaces, before it)."""
    if not text:
        return ()
    start = len(raw.rstrip()) - len(text)
    moved = []
    for span in raw_spans:
        first, last = max(span.start - start, 0), min(span.end - start, len(text))
        if last > first:
            moved.append(TokenSpan(first, last, span.logprob))
    return tuple(moved)
