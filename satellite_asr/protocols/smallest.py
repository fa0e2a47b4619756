"""Smallest AI's Pulse real-time speech-to-text API at `/waves/v1/stt/live` (docs/smallest.md):
wire messages <-> `Session` calls, so that Pipecat's `SmallestSTTService` and LiveKit's
`smallestai.STT` reach the daemon by their base URL alone.

The stream's settings are the URL's query, checked before the upgrade (a bad one is an HTTP 400, as
Smallest refuses a model it cannot stream). Audio comes as binary messages of raw PCM. Each
utterance's partials go out as `transcription` messages with `is_final: false`, its final with
`is_final: true`; `{"type": "finalize"}` ends the utterance in progress (its final says
`from_finalize`), `{"type": "close_stream"}` sends what is still to come, then an empty final with
`is_last: true`, then the Close. With `vad_events` the daemon's VAD sends `speech_started` and
`speech_ended`. An error is `{"type": "error", "status", "code", "message"}`, and the stream goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, web
from multidict import MultiMapping

from satellite_asr.access import error_response
from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SpeechStarted, SpeechStopped
from satellite_asr.protocols import ProtocolError, ReadAhead, checked_biasing, checked_language, smallest_error
from satellite_asr.protocols.deepgram_prerecorded import positive_number
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ErrorEventConnection,
    ParameterError,
    StreamParams,
    boolean_parameter,
    check_fields,
    check_names,
    confidence,
    is_control,
    refuse_features,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/waves/v1/stt/live"
PROTOCOL = "smallest"
MODELS = ("pulse", "pulse-2")
"""The models Smallest streams with (it refuses `pulse-pro` before the upgrade); either is accepted
and the daemon's engine answers."""
ENCODINGS = {"linear16": "s16le", "mulaw": "pcmu", "alaw": "pcma"}
"""Smallest's names of the raw encodings this server decodes, and its own (`linear32`, `opus` and
`ogg_opus` are Smallest's too, and refused)."""
DETECT = ("multi", "multi-eu", "multi-indic", "multi-asian")
"""`language` values that ask Smallest to detect the language: the engine detects it."""
NOT_APPLIED_BOOLEANS = {
    "format",
    "itn_normalize",
    "no_format_delay",
    "endpointing",
    "emotion_detection",
    "gender_detection",
    "finalize_on_words",
}
"""Flags checked and not applied: formatting the engine does its own way, Pulse 2's per-utterance
estimates, and Smallest's own endpointing (the daemon's VAD cuts the utterances)."""
NOT_APPLIED_NUMBERS = {"endpointing_timeout": (0, 10000), "eou_timeout_ms": (0, 10000), "max_words": (1, 10000)}
"""Whole numbers checked and not applied, with their ranges (the daemon's endpointing sets the pace)."""
NUMERALS = ("auto", "true", "false")
REFUSED_WHEN_ON = {
    "diarize": "speaker diarization",
    "redact_pii": "redaction of personal information",
    "redact_pci": "redaction of payment card information",
}
"""Features refused when asked for (`false` is fine), rather than silently missing."""
KNOWN = {
    "model",
    "language",
    "encoding",
    "sample_rate",
    "word_timestamps",
    "full_transcript",
    "sentence_timestamps",
    "vad_events",
    "keywords",
    "numerals",
    *NOT_APPLIED_BOOLEANS,
    *NOT_APPLIED_NUMBERS,
    *REFUSED_WHEN_ON,
}
STATUS = {
    "idle_timeout": 408,
    "engine_error": 500,
    "server_busy": 503,
    "shutdown": 503,
}
"""The HTTP-like `status` of each of the daemon's error codes; any other is input refused, 400."""


@dataclass(frozen=True)
class PulseParams:
    """The stream's settings from the URL's query."""

    model: str
    encoding: str
    sample_rate: int
    language: str | None
    """None: the engine detects it (`language=multi`)."""
    terms: tuple[str, ...]
    word_timestamps: bool
    full_transcript: bool
    sentence_timestamps: bool
    vad_events: bool

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_query(query: MultiMapping[str], core: Core) -> PulseParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    check_names(query, KNOWN, set())
    refuse_features(query, REFUSED_WHEN_ON, {})
    model = query.get("model", "pulse")
    if model not in MODELS:
        raise ParameterError("model", f"model {model!r} does not stream; use one of {', '.join(MODELS)}")
    encoding = query.get("encoding", "linear16")
    if encoding not in ENCODINGS:
        raise ParameterError(
            "encoding", f"encoding {encoding!r} is not one this server decodes; use one of {', '.join(ENCODINGS)}"
        )
    sample_rate = whole_parameter(query, "sample_rate", 16000, MIN_RATE, MAX_RATE)
    assert sample_rate is not None
    for name in NOT_APPLIED_BOOLEANS:
        boolean_parameter(query, name, True)
    for name, (low, high) in NOT_APPLIED_NUMBERS.items():
        whole_parameter(query, name, None, low, high)
    if query.get("numerals", "auto").lower() not in NUMERALS:
        raise ParameterError("numerals", f"numerals must be auto, true or false, got {query['numerals']!r}")
    language, terms = language_and_terms(query, core)
    return PulseParams(
        model=model,
        encoding=encoding,
        sample_rate=sample_rate,
        language=language,
        terms=terms,
        word_timestamps=boolean_parameter(query, "word_timestamps", True),
        full_transcript=boolean_parameter(query, "full_transcript", False),
        sentence_timestamps=boolean_parameter(query, "sentence_timestamps", False),
        vad_events=boolean_parameter(query, "vad_events", False),
    )


def language_and_terms(query: Mapping[str, str], core: Core) -> tuple[str | None, tuple[str, ...]]:
    """The language (None: detected) and the `keywords` without their weights, checked against the engine."""
    named = query.get("language", "en")
    try:
        language = (
            None if named in DETECT else checked_language(core, named, "language") or core.settings.default_language
        )
        terms = keywords(query.get("keywords", ""))
        checked_biasing(core, "", terms, "keywords", "keywords")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language") from None
    return language, terms


def keywords(value: str) -> tuple[str, ...]:
    """`WORD:WEIGHT,WORD:WEIGHT` (or a bare word) as the words: the engine takes words, not weights,
    and a weight must be a positive number."""
    terms = []
    for item in value.split(","):
        word, colon, weight = item.rpartition(":")
        if not colon:
            word = weight
        elif not positive_number(weight):
            raise ParameterError("keywords", f"keyword {item.strip()!r}: its weight must be a positive number")
        if word.strip():
            terms.append(word.strip())
    return tuple(terms)


def error_event(code: str, message: str) -> dict[str, Any]:
    """Smallest's in-stream error, the daemon's `code` beside its `status`."""
    return smallest_error(STATUS.get(code, 400), code, message)


def ends_stream(message: WSMessage) -> bool:
    """`close_stream`: what the client sent before its Close is still wanted."""
    return is_control(message, "close_stream")


def word_spans(final: FinalTranscript) -> list[dict[str, Any]]:
    """The final's words, each spanning the whole utterance with the final's confidence: the engine
    gives no word timestamps, and a made-up time per word would look measured."""
    (start, end), sureness = final.span, confidence(final)
    return [{"word": word, "start": start, "end": end, "confidence": sureness} for word in final.text.split()]


def utterance(final: FinalTranscript) -> dict[str, Any]:
    """A final as one of Smallest's sentence-level `utterances`."""
    start, end = final.span
    return {"text": final.text.strip(), "start": start, "end": end}


class PulseConnection(ErrorEventConnection):
    """A client of the real-time API: its audio, `finalize`, `keepalive` and `close_stream`; each
    utterance's interim and final `transcription` messages."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, PulseParams)
        self.options = params
        self.finals: list[str] = []
        """Every final's text so far (`full_transcript`)."""
        self.stopped: dict[int, float] = {}
        """Where each utterance whose final is not sent stopped: its `speech_ended` follows its final,
        which LiveKit's plugin takes as part of the turn only before the turn's end."""

    def transcription(self, text: str, *, is_final: bool, **fields: Any) -> dict[str, Any]:
        return {
            "type": "transcription",
            "session_id": self.request_id,
            "transcript": text,
            "is_final": is_final,
            "is_last": False,
            "language": self.options.language or self.core.settings.default_language,
            **fields,
        }

    async def opened(self) -> None:
        """Nothing: Smallest says nothing before its first transcript."""

    async def speech_started(self, event: SpeechStarted) -> None:
        await super().speech_started(event)
        await self.announce()

    async def announce(self) -> None:
        """`speech_started` (with `vad_events`) of the first utterance whose final is not sent, once: a
        later one's waits for the final before it, as its partials do."""
        if self.options.vad_events and (start := self.pending.announce()) is not None:
            await self.vad_event("speech_started", start)

    async def speech_stopped(self, event: SpeechStopped) -> None:
        self.stopped[event.utterance_id] = event.end

    async def vad_event(self, kind: str, seconds: float) -> None:
        await self.send({"type": kind, "session_id": self.request_id, "timestamp": round(seconds, 3)})

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.send(self.transcription(text.strip(), is_final=False))

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final (with its words, when asked for), then what it held back."""
        self.pending.final(event.utterance_id)
        await self.send(self.final_message(event, from_finalize=self.answers_flush(event.utterance_id)))
        stopped = self.stopped.pop(event.utterance_id, event.end)
        if self.options.vad_events and event.utterance_id == self.pending.announced:
            await self.vad_event("speech_ended", stopped)
        await self.announce()
        await self.release_held()

    def final_message(self, event: FinalTranscript | None, *, from_finalize: bool) -> dict[str, Any]:
        """A final `transcription`: the utterance's, or (`event` None) the empty one answering a
        finalize with nothing in progress; either with the `words`, `utterances` and `full_transcript`
        asked for, so that a client reading them from every final finds them."""
        text = event.text.strip() if event is not None else ""
        fields: dict[str, Any] = {
            "speech_final": event is not None and event.is_speech_final,
            "from_finalize": from_finalize,
        }
        if event is not None and event.language:
            fields["language"] = event.language
        if self.options.word_timestamps:
            fields["words"] = word_spans(event) if event is not None else []
        if self.options.sentence_timestamps and event is not None and text:
            fields["utterances"] = [utterance(event)]
        if text:
            self.finals.append(text)
        if self.options.full_transcript:
            fields["full_transcript"] = " ".join(self.finals)
        return self.transcription(text, is_final=True, **fields)

    async def closing(self) -> None:
        """The terminal message `close_stream` is answered with: an empty final, `is_last`."""
        last = self.transcription("", is_final=True, is_last=True)
        if self.options.full_transcript:
            last["full_transcript"] = " ".join(self.finals)
        await self.send(last)

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    def controls(self) -> dict[str, Control]:
        return {"finalize": self.finalize, "close_stream": self.close_stream, "keepalive": self.keepalive}

    async def finalize(self, message: dict[str, Any]) -> None:
        """Ends the utterance in progress now (its final says `from_finalize`); with none in progress,
        an empty final says so, as Smallest answers every finalize with one."""
        check_fields(message, "finalize", set())
        if not await self.flush_for_client():
            await self.send(self.final_message(None, from_finalize=True))

    async def close_stream(self, message: dict[str, Any]) -> None:
        check_fields(message, "close_stream", set())
        await self.end()

    async def keepalive(self, message: dict[str, Any]) -> None:
        """The stream is alive while the connection is; answered with `pong`, as Smallest does."""
        check_fields(message, "keepalive", set())
        await self.send({"type": "pong"})


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.Response:
    """A bad query is refused before the upgrade, as Smallest refuses a model it cannot stream: a
    400 naming the parameter, which both clients report with its status."""
    return error_response(request.path, 400, "invalid_query_parameter", f"{exc.parameter}: {exc}")


LIVE = Api(PATH, "Smallest AI's Pulse real-time API", parse_query, PulseConnection, ends_stream, refuse_parameters)
