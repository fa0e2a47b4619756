"""What a `Session` tells its protocol adapter. Times are seconds of session audio."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began (the start includes the pre-roll kept before the detected onset)."""

    utterance_id: int
    start: float


@dataclass(frozen=True)
class SpeechStopped:
    """The utterance's audio ended: endpoint, flush, end of stream or the length cap."""

    utterance_id: int
    end: float


@dataclass(frozen=True)
class PartialTranscript:
    """The utterance so far. `stable_text` is a prefix of `text` that later text will keep.

    `stable_text` only grows within an utterance and the final text starts with it, so clients that
    append text (Wyoming transcript chunks) can send it without ever taking anything back.
    """

    utterance_id: int
    text: str
    stable_text: str


def seconds_span(start: float, end: float) -> tuple[float, float]:
    """A stretch of the stream in seconds to the millisecond, as the APIs' messages give it: the end
    never before the start (a final's, or a partial's so far)."""
    return round(start, 3), round(max(start, end), 3)


@dataclass(frozen=True)
class FinalTranscript:
    """The one final of an utterance; `is_speech_final` is True when VAD endpointing ended it."""

    utterance_id: int
    text: str
    is_speech_final: bool
    start: float
    end: float
    language: str | None
    endpoint: str
    """Why it ended: `complete` (a complete command, the short silence), `silence` (the full silence)
    or `forced` (flush, end of stream, idle timeout, shutdown, the length cap)."""
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    """The engine's `Transcript.avg_logprob` and `no_speech_prob` of the decode whose text this is
    (speculative or not); None when the engine does not say or the decode failed."""

    @property
    def span(self) -> tuple[float, float]:
        """Where the utterance began and ended, as the APIs' messages give them (`seconds_span`)."""
        return seconds_span(self.start, self.end)


@dataclass(frozen=True)
class SessionError:
    """Something went wrong that the client should hear about; the session stays usable."""

    code: str
    message: str
    utterance_id: int | None = None
    """The utterance it concerns (an `engine_error` precedes that utterance's final), if any."""


SessionEvent = SpeechStarted | SpeechStopped | PartialTranscript | FinalTranscript | SessionError
