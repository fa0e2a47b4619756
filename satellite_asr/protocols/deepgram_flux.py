"""Deepgram's turn-taking API (v2, "Flux") at `/v2/listen` (docs/deepgram.md): wire messages <-> `Session` calls.

Flux reports turns, not results: `Connected` first, then for each turn `TurnInfo` events,
`StartOfTurn` once its first words are transcribed, an `Update` for each newer transcript, and
`EndOfTurn` with the whole turn's text. The daemon's turn detection is what ends a turn: a third of
a second after a command that reads and sounds complete, the long silence otherwise (its `eot_*`
thresholds are taken and not used). Every message counts in `sequence_id`, from 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionError, SessionEvent, SpeechStarted
from satellite_asr.protocols import ProtocolError, ReadAhead, checked_biasing, checked_language, echoable
from satellite_asr.protocols.deepgram import ENCODINGS, DeepgramConnection, biasing_terms, deepgram_api, raw_audio
from satellite_asr.protocols.streaming_apis import (
    Control,
    ParameterError,
    StreamParams,
    check_names,
    confidence,
    fraction_parameter,
    keep_alive,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v2/listen"
PROTOCOL = "deepgram-flux"
MULTILINGUAL_MODEL = "flux-general-multi"
"""The Flux model that detects the language, and takes language hints (in the query and in `Configure`;
Pipecat sends them to it alone, LiveKit's STTv2 to any model): one hint steers the decode, several or
none let the engine detect. With any other model the daemon's `language` is used and hints change nothing."""
THRESHOLDS = {"eot_threshold": (0.5, 1.0), "eager_eot_threshold": (0.3, 0.9)}
"""Flux's end-of-turn thresholds and their ranges: checked, kept, answered in `ConfigureSuccess`, not used."""
EOT_TIMEOUT_MS = (500, 60_000)
KNOWN = {
    "model",
    "encoding",
    "sample_rate",
    "keyterm",
    *THRESHOLDS,
    "eot_timeout_ms",
    "language_hint",
    "numerals",
    "profanity_filter",
    "mip_opt_out",
    "tag",
}
"""Flux's query parameters (`redact` is refused: not done here)."""
REPEATABLE = {"keyterm", "language_hint", "tag"}
FORMATTING = ("numerals", "profanity_filter")
"""What a `Configure` may turn on or off that changes nothing here: the engine writes text its own way."""


@dataclass(frozen=True)
class FluxParams:
    """The stream's settings from the URL's query."""

    encoding: str
    sample_rate: int
    detect_language: bool
    """The multilingual model: each `EndOfTurn` says its language."""
    terms: tuple[str, ...]
    thresholds: dict[str, float] = field(default_factory=dict)
    hints: tuple[str, ...] = ()
    """The language hints, each an engine's code."""

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        language = hinted_language(core, self.detect_language, self.hints)
        return SessionOptions.from_settings(core.settings, partials=True, language=language, terms=self.terms)


def parse_flux_params(query: MultiMapping[str], core: Core) -> StreamParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    if "redact" in query:
        raise ParameterError("redact", "this server does not do redaction; leave redact out")
    check_names(query, KNOWN, REPEATABLE)
    encoding, sample_rate = raw_audio(query)
    thresholds = checked_thresholds(query)
    terms = biasing_terms(query)
    try:
        checked_biasing(core, "", terms, "keyterm", "keyterm")
    except ProtocolError as exc:
        raise ParameterError("keyterm", exc.message) from None
    multilingual = query.get("model") == MULTILINGUAL_MODEL
    hints = checked_hints(core, query.getall("language_hint", []), "language_hint")
    return FluxParams(encoding, sample_rate, multilingual, terms, thresholds, hints)


def checked_hints(core: Core, hints: object, name: str) -> tuple[str, ...]:
    """Language hints as the engine's codes, once each, or `ParameterError` naming `name`."""
    if not isinstance(hints, list) or not all(isinstance(hint, str) for hint in hints):
        raise ParameterError(name, f"{name} must be a list of language codes")
    try:
        codes = [checked_language(core, hint, name) for hint in hints]
    except ProtocolError as exc:
        raise ParameterError.of(exc, name) from None
    return tuple(dict.fromkeys(code for code in codes if code is not None))


def hinted_language(core: Core, multilingual: bool, hints: tuple[str, ...]) -> str | None:
    """The language to decode in: on the multilingual model the one hint (None, detected, with several
    or none), on any other the daemon's `language`."""
    if not multilingual:
        return core.settings.default_language
    return hints[0] if len(hints) == 1 else None


def checked_thresholds(values: Mapping[str, str]) -> dict[str, float]:
    """The end-of-turn thresholds given, each in its range, or `ParameterError` naming the first that is not."""
    thresholds = {name: fraction_parameter(values, name, *bounds) for name, bounds in THRESHOLDS.items()}
    timeout = whole_parameter(values, "eot_timeout_ms", None, *EOT_TIMEOUT_MS)
    given = {name: value for name, value in thresholds.items() if value is not None}
    return given if timeout is None else {**given, "eot_timeout_ms": timeout}


class FluxConnection(DeepgramConnection):
    """A client of Flux: `Connected`, each turn's `TurnInfo` events, `ForceEndTurn` and `Configure`."""

    protocol = PROTOCOL
    invalid_message = "unparsable_client_message"

    def __init__(
        self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead, params: StreamParams
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, FluxParams)
        self.options = params
        self.thresholds = dict(params.thresholds)
        self.terms = params.terms
        """The stream's keyterms now (`Configure` may replace them)."""
        self.hints = params.hints
        """The stream's language hints now (`Configure` may replace them)."""
        self.sequence = 0
        self.sending = asyncio.Lock()
        self.turns = 0
        """Turns reported (the next one's `turn_index`)."""
        self.in_turn = False
        """A `StartOfTurn` was sent and its `EndOfTurn` not yet."""
        self.turn_start = 0.0
        self.starts: dict[int, float] = {}
        """Where the VAD heard each utterance whose final has not come yet begin."""

    async def send(self, message: dict[str, Any]) -> None:
        """Every message carries the request's id and counts in `sequence_id`, numbered as it is
        written: the session's tasks and the handler send side by side, and a large message
        compressed (over 16 KB, in aiohttp's executor) was overtaken by a later small one."""
        async with self.sending:
            numbered = {**message, "request_id": self.request_id, "sequence_id": self.sequence}
            self.sequence += 1
            await super().send(numbered)

    async def opened(self) -> None:
        await self.send({"type": "Connected"})

    async def closing(self) -> None:
        """Nothing: Flux ends with the last turn's `EndOfTurn`."""

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Flux's `Error` when the connection ends with it, its `Warning` when the stream goes on;
        `message` may quote what the client sent (`echoable`)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        kind = "Error" if fatal else "Warning"
        await self.send({"type": kind, "code": code.upper(), "description": echoable(message)})

    def turn_info(self, event: str, text: str, end: float, sureness: float, eot: float) -> dict[str, Any]:
        """A `TurnInfo`: the turn's text so far, its words each as sure as the decode was of the
        whole (Flux's clients read the words), and how sure the turn has ended (1 at `EndOfTurn`)."""
        return {
            "type": "TurnInfo",
            "event": event,
            "turn_index": self.turns,
            "audio_window_start": round(self.turn_start, 3),
            "audio_window_end": round(end, 3),
            "transcript": text,
            "words": [{"word": word, "confidence": sureness} for word in text.split()],
            "end_of_turn_confidence": eot,
        }

    async def send_event(self, event: SessionEvent) -> None:
        if isinstance(event, SpeechStarted):
            self.starts[event.utterance_id] = event.start
        elif isinstance(event, PartialTranscript):
            # the utterance before has ended, its final not come yet: this is not its turn, nor yet a new one
            if not event.text.strip() or any(earlier < event.utterance_id for earlier in self.starts):
                return
            if not self.in_turn:
                await self.start_turn(event.text, self.starts.get(event.utterance_id, 0.0), self.seconds)
            else:
                await self.send(self.turn_info("Update", event.text, self.seconds, 0.0, 0.0))
        elif isinstance(event, FinalTranscript):
            await self.end_turn(event)
        elif isinstance(event, SessionError):
            await self.error(event.code, event.message, counted=True)

    async def start_turn(self, text: str, start: float, end: float) -> None:
        self.in_turn, self.turn_start = True, start
        await self.send(self.turn_info("StartOfTurn", text, end, 0.0, 0.0))

    async def end_turn(self, event: FinalTranscript) -> None:
        """`EndOfTurn` with the final's text (after a `StartOfTurn` if no partial began the turn), and
        on the multilingual model the language detected; nothing for an utterance in which no words
        were heard, as Flux starts no turn without words."""
        self.starts.pop(event.utterance_id, None)
        if not event.text.strip() and not self.in_turn:
            return
        if not self.in_turn:
            await self.start_turn(event.text, event.start, event.end)
        info = self.turn_info("EndOfTurn", event.text, event.end, confidence(event), 1.0)
        info["trigger"] = "model" if event.is_speech_final else "manual"
        if self.options.detect_language and event.language:
            info["languages"] = [event.language]  # what LiveKit and Pipecat read the turn's language from
        self.in_turn = False
        self.turns += 1
        await self.send(info)

    def controls(self) -> dict[str, Control]:
        return {
            "CloseStream": self.end_stream,
            "ForceEndTurn": self.end_now,
            "KeepAlive": keep_alive,
            "Configure": self.configure,
        }

    async def configure(self, message: dict[str, Any]) -> None:
        """`keyterms` and `language_hints` replace the stream's from its next turn on (hints steer the
        multilingual model alone); thresholds are checked and kept (they change nothing here), and so
        are `numerals` and `profanity_filter` (formatting). A failure applies nothing."""
        assert self.input is not None
        unsupported = sorted(set(message) - {"type", "thresholds", "keyterms", "language_hints", *FORMATTING})
        thresholds = message.get("thresholds")
        thresholds = {} if thresholds is None else thresholds
        problem = f"this server cannot change {', '.join(unsupported)} mid-stream" if unsupported else None
        if problem is None and not isinstance(thresholds, dict):
            problem = "thresholds must be an object"
        for name in FORMATTING:
            if problem is None and not isinstance(message.get(name, False), bool):
                problem = f"{name} must be true or false"
        terms = None
        if problem is None and message.get("keyterms") is not None:
            try:
                terms = replacing_terms(self.core, message["keyterms"], "keyterms")
            except ProtocolError as exc:
                problem = exc.message
        hints = None
        if problem is None and message.get("language_hints") is not None:
            try:
                hints = checked_hints(self.core, message["language_hints"], "language_hints")
            except ParameterError as exc:
                problem = f"{exc.parameter}: {exc}"
        checked: dict[str, float] = {}
        if problem is None:
            values = {str(k): str(v) for k, v in thresholds.items()}
            unknown = sorted(set(values) - set(THRESHOLDS) - {"eot_timeout_ms"})
            try:
                checked = checked_thresholds(values)
            except ParameterError as exc:
                problem = f"thresholds.{exc.parameter}: {exc}"
            if unknown:
                problem = f"unknown thresholds: {', '.join(unknown)}"
        if problem is not None:
            refused = ProtocolError("CONFIGURE_INVALID", problem)  # the client's names quoted, at most MESSAGE_CHARS
            failure = {"type": "ConfigureFailure", "code": refused.code, "description": echoable(refused.message)}
            await self.send(failure)
            return
        self.thresholds.update(checked)
        if terms is not None:
            self.input.session.change_decoding(terms=terms)
            self.terms = terms
        if hints is not None:
            self.input.session.change_decoding(language=hinted_language(self.core, self.options.detect_language, hints))
            self.hints = hints
        keyterms = [echoable(term) for term in self.terms]  # a lone surrogate written out, as strict parsers need
        success = {"type": "ConfigureSuccess", "thresholds": self.thresholds, "keyterms": keyterms}
        await self.send({**success, "language_hints": list(self.hints)})


FLUX = deepgram_api(PATH, "Deepgram's Flux API", parse_flux_params, FluxConnection)
