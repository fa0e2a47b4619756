"""The engine contract: one shared model, many per-utterance streams.

Sessions never call a model directly: they go through the `DecodeScheduler`, which calls
`EngineStream.partial` / `EngineStream.final`. Every engine re-decodes the whole utterance so far on
each call (audio is passed in, the session owns it), so a stream only keeps what an engine needs
between calls of one utterance (for Qwen3-ASR, the previous text for token rollback).

Aborting is asyncio cancellation: when the scheduler cancels a `partial` or `final` call (its
utterance ended, or speech resumed after a speculative final), the engine must stop that work
(vLLM: abort the request) rather than finish it for nobody.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from satellite_asr.audio import Audio


class EngineError(Exception):
    """A decode failed; the session reports `engine_error` and carries on with the next utterance."""


def model_location(model: str) -> str:
    """`model` as the model libraries take it: a name (downloaded when online), or a local path.

    A path (it starts with `/`, `.` or `~`; hub names cannot) must be a directory. Checked here
    because the libraries take a missing one for a name and report a bad repository id.
    """
    if not model.startswith(("/", ".", "~")):
        return model
    path = os.path.expanduser(model)
    if not os.path.isdir(path):
        raise OSError(f"no model directory at {path}")
    return path


@dataclass(frozen=True)
class StreamOptions:
    """What a session asks of the engine for its utterances."""

    language: str | None = None
    """Language code (e.g. `en`); None lets the engine detect it."""
    context: str = ""
    """Biasing text (names, terms, previous conversation); engines use it as a prompt."""
    names: tuple[str, ...] = ()
    """Names the utterances may contain (the client's terms, then the household's names, ranked):
    an engine may check what it heard against them (whisper decodes again with the near ones and
    those it nearly wrote)."""


@dataclass(frozen=True)
class TokenSpan:
    """Characters `start:end` of a transcript's text, written by one token of this log-probability."""

    start: int
    end: int
    logprob: float


@dataclass(frozen=True)
class Transcript:
    """One decode's result."""

    text: str
    language: str | None = None
    tokens: int = 0
    """Generated token count (for metrics and for engine tests that cannot check words)."""
    mean_logprob: float | None = None
    """How sure the engine is of these words: the decode's log-probability (its end token
    included) per text token; None when the engine does not say. Turn detection distrusts a low one."""
    token_spans: tuple[TokenSpan, ...] = ()
    """How sure the engine was of each part of `text`, token by token, when the stream has names (a
    token that wrote only spaces at the text's edges, or nothing after it, has none); empty when
    it does not say (no names; Whisper's beam search, or whenever its decode takes
    faster-whisper's own path; a vLLM server that leaves out the log-probabilities asked for). The
    name correction distrusts a loose match with words the engine was sure of
    (`NameCorrector.sure_logprob`); without spans it judges the text alone."""
    nearly_written: tuple[str, ...] = ()
    """The stream's names the engine leaned to most where it wrote other words unsurely, strongest
    first; empty when it does not say (partials; Whisper's beam search or its own 30 s path;
    Qwen3-ASR). The name correction matches them right after names as spelled (`NameCorrector.replacements`)."""
    no_speech_prob: float | None = None
    """How likely the engine thought the audio held no speech before it wrote a word (Whisper's
    no-speech token at the start of the transcript); None when it does not say (Qwen3-ASR; Whisper's
    partials, whose clients never read it). Sent as verbose_json's `no_speech_prob`."""

    @property
    def avg_logprob(self) -> float | None:
        """`mean_logprob` averaged as Whisper and OpenAI's verbose_json do: over the text tokens and
        the end token; None when the engine does not say."""
        if self.mean_logprob is None or self.tokens == 0:
            return None
        return self.mean_logprob * self.tokens / (self.tokens + 1)


@dataclass(frozen=True)
class EngineInfo:
    """What `/health`, Wyoming `info` and `session_created` report about the engine."""

    name: str
    model: str
    languages: list[str] = field(default_factory=list)
    max_concurrency: int = 1
    """How many decodes the engine runs at once; the scheduler keeps at most this many in flight."""
    context_names: int = 100
    """How many of the household's names the engine gets as context unless `ha_names_limit` says."""

    def supported_language(self, language: str) -> str | None:
        """`language` as the engine names it, or None if it cannot transcribe it.

        A region tag (`en-US`, `en_GB`) falls back to its language. An engine that has not listed its
        languages yet (a model still loading) is taken at its word: the decode reports a bad one.
        """
        if not self.languages or language in self.languages:
            return language
        base = language.replace("_", "-").split("-")[0].lower()
        return base if base in self.languages else None


class EngineStream(abc.ABC):
    """Decoding state of one utterance."""

    @abc.abstractmethod
    async def partial(self, audio: Audio) -> Transcript:
        """Decode the utterance so far; may be less accurate than `final` (streaming tricks)."""

    @abc.abstractmethod
    async def final(self, audio: Audio) -> Transcript:
        """Decode the whole utterance afresh for the final text: the best decode of its audio,
        whatever partials came before (so the final does not depend on how the audio was framed)."""


class Engine(abc.ABC):
    """A loaded model shared by every session."""

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Name, model and languages, valid before `start` finishes."""

    @property
    def ready(self) -> bool:
        """True once `start` has finished; `/health` answers 503 before."""
        return self._ready

    _ready: bool = False

    restartable: bool = True
    """`close` then `start` reloads it: what the core does when it stops decoding (see `core.py`).
    False for an engine whose model lives elsewhere (a remote server): it is only probed."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model (may take long; never blocks the event loop)."""

    @abc.abstractmethod
    def open_stream(self, options: StreamOptions) -> EngineStream:
        """A stream for one utterance."""

    def report_batch_sizes(self, observe: Callable[[int], None]) -> None:
        """Have `observe(n)` called for every model step that ran `n` decodes together; set before `start`.

        This is how an operator sees that sessions share the model (`satellite_asr_engine_batch_size`).
        Engines that decode one utterance at a time have nothing to report and ignore it.
        """
        return None

    def report_redecodes(self, count: Callable[[str], None]) -> None:
        """Have `count(reason)` called for every decode the engine runs again on audio it already
        decoded, by `reason`; set before `start`. It may be called from the engine's worker threads.

        This is what biasing and recovery cost in decodes (`satellite_asr_engine_redecodes`). Engines
        that decode each audio once have nothing to report and ignore it.
        """
        return None

    async def close(self) -> None:
        """Free the model: at shutdown, and before `start` again when the core restarts a broken engine."""
        return None
