"""Deepgram's live transcription API (v1) at `/v1/listen` (docs/deepgram.md): wire messages <-> `Session` calls.

The stream's settings are the URL's query parameters, checked before the upgrade (a bad one is an
HTTP 400 with Deepgram's error body). One session serves the connection. Each utterance gives
`SpeechStarted` (with `vad_events`), interim `Results` while it is spoken (with `interim_results`),
then its final `Results` (`is_final`, and `speech_final` when the daemon's endpointing ended it),
then `UtteranceEnd` (with `utterance_end_ms`); the next utterance's wait for those, as Deepgram
sends in audio order (`PendingFinals`). `Finalize` ends the utterance in progress
(`from_finalize`); `CloseStream` sends what is still to come, then `Metadata`, then the Close.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr import __version__
from satellite_asr.access import error_response
from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.engines.base import EngineInfo
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionError, SessionEvent, SpeechStarted
from satellite_asr.protocols import (
    ProtocolError,
    ReadAhead,
    checked_biasing,
    checked_language,
    echoable,
)
from satellite_asr.protocols.streaming_apis import (
    BOOLEAN_VALUES,
    Api,
    ApiParser,
    Control,
    ParameterError,
    PendingFinals,
    StreamingConnection,
    StreamParams,
    ascii_digits,
    boolean_parameter,
    check_names,
    confidence,
    is_control,
    keep_alive,
    refuse_features,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v1/listen"
PROTOCOL = "deepgram"
ENCODINGS = {"linear16": "s16le", "mulaw": "pcmu", "alaw": "pcma"}
"""Deepgram's names of the raw encodings this server decodes, and its own."""
MAX_CHANNELS = 8
CHANNEL = [0, 1]
"""`channel_index` / `channel`: channel 0 of 1 (channels are mixed to one)."""
USED = {
    "encoding",
    "sample_rate",
    "channels",
    "interim_results",
    "vad_events",
    "utterance_end_ms",
    "endpointing",
    "language",
    "keyterm",
    "keywords",
    "model",
    "alternatives",
}
"""Parameters that set something of the stream (docs/deepgram.md)."""
IGNORED = {
    "punctuate",  # transcripts are punctuated as the engine writes them
    "smart_format",
    "numerals",
    "filler_words",
    "profanity_filter",
    "dictation",
    "no_delay",
    "mip_opt_out",
    "tag",
    "version",
    "extra",
    "language_hint",
    "measurements",
    "diarize_version",
    "tier",
}
"""Parameters a client may send that change nothing here: formatting the engine does its own way,
and Deepgram's own bookkeeping."""
REFUSED_WHEN_ON = {
    "diarize": "speaker labels",
    "detect_entities": "entity detection",
    "multichannel": "a transcript per channel",
}
"""Features a client may ask for that this server does not do: asked for, they are refused rather
than silently missing; `false` is fine."""
REFUSED_WHEN_GIVEN = {
    "redact": "redaction",
    "replace": "find and replace",
    "search": "search",
    "callback": "callbacks",
    "callback_method": "callbacks",
}
"""Features refused whatever their value."""
REPEATABLE = {"keyterm", "keywords", "tag", "extra", "redact", "replace", "search", "language_hint"}
"""Parameters Deepgram takes more than once; any other given twice is refused."""
MIN_UTTERANCE_END_MS = 1000
"""Deepgram's own lower bound for `utterance_end_ms`."""


@dataclass(frozen=True)
class ListenParams:
    """The stream's settings from the URL's query."""

    encoding: str
    sample_rate: int
    channels: int
    interim_results: bool
    vad_events: bool
    utterance_end_ms: int | None
    speech_final: bool
    """False with `endpointing=false`: finals then never say the speaker finished."""
    language: str | None
    """None: the engine detects it (`language=multi`)."""
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate, self.channels)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings, partials=self.interim_results, language=self.language, terms=self.terms
        )


def parse_params(query: MultiMapping[str], core: Core) -> ListenParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    check_names(query, USED | IGNORED | set(REFUSED_WHEN_ON) | set(REFUSED_WHEN_GIVEN), REPEATABLE)
    refuse_features(query, REFUSED_WHEN_ON, REFUSED_WHEN_GIVEN)
    one_alternative(query)
    encoding, sample_rate = raw_audio(query)
    channels = whole_parameter(query, "channels", 1, 1, MAX_CHANNELS)
    assert channels is not None
    utterance_end_ms = whole_parameter(query, "utterance_end_ms", None, MIN_UTTERANCE_END_MS, 5000)
    endpointing = query.get("endpointing", "")
    if endpointing.lower() not in BOOLEAN_VALUES and not ascii_digits(endpointing) and endpointing != "":
        raise ParameterError("endpointing", f"endpointing must be false or a whole number of ms, got {endpointing!r}")
    named, terms = language_and_terms(query, core, detect=query.get("language") == "multi")
    return ListenParams(
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        interim_results=boolean_parameter(query, "interim_results", False),
        vad_events=boolean_parameter(query, "vad_events", False),
        utterance_end_ms=utterance_end_ms,
        speech_final=endpointing.lower() != "false",
        language=named,
        terms=terms,
    )


def one_alternative(query: Mapping[str, str]) -> None:
    """`ParameterError` unless `alternatives` is left out or 1: this server writes one transcript."""
    if query.get("alternatives", "1") != "1":
        raise ParameterError("alternatives", "this server writes one transcript; leave alternatives out or set it to 1")


def language_and_terms(query: MultiMapping[str], core: Core, *, detect: bool) -> tuple[str | None, tuple[str, ...]]:
    """The language the utterances are decoded in (None: the engine detects it) and the `keyterm`s
    and `keywords`, both checked against the engine, or `ParameterError` naming the one at fault."""
    try:
        language = None if detect else checked_language(core, query.get("language"), "language")
        terms = biasing_terms(query)
        checked_biasing(core, "", terms, "keyterm", "keyterm and keywords")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language") from None
    return (None if detect else language or core.settings.default_language), terms


def raw_audio(query: Mapping[str, str]) -> tuple[str, int]:
    """The stream's `encoding` and `sample_rate`, both required: the live APIs take raw audio here."""
    encoding = query.get("encoding")
    if encoding is None:
        raise ParameterError(
            "encoding", f"encoding is required: this server takes raw audio, one of {', '.join(ENCODINGS)}"
        )
    if encoding not in ENCODINGS:
        message = f"encoding {encoding!r} is not one this server decodes; use one of {', '.join(ENCODINGS)}"
        raise ParameterError("encoding", message)
    sample_rate = whole_parameter(query, "sample_rate", None, MIN_RATE, MAX_RATE)
    if sample_rate is None:
        raise ParameterError("sample_rate", "sample_rate is required with encoding")
    return encoding, sample_rate


def biasing_terms(query: MultiMapping[str]) -> tuple[str, ...]:
    """`keyterm`s, then `keywords` without their `:boost` (the engine takes words, not weights)."""
    keywords = [value.rsplit(":", 1)[0] if _boosted(value) else value for value in query.getall("keywords", [])]
    return tuple(term.strip() for term in (*query.getall("keyterm", []), *keywords) if term.strip())


def _boosted(keyword: str) -> bool:
    _, colon, boost = keyword.rpartition(":")
    try:
        return bool(colon) and math.isfinite(float(boost))
    except ValueError:
        return False


def created_now() -> str:
    """Deepgram's `created`: now, in UTC, to the millisecond."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def metadata(
    request_id: str, sha256: str, created: str, seconds: float, channels: int, engine: EngineInfo
) -> dict[str, Any]:
    """Deepgram's summary of a request (the live API's `Metadata`, the pre-recorded response's
    `metadata`): its audio's hash and length, and the model that answered."""
    model_id, model = model_info(engine)
    return {
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": created,
        "duration": round(seconds, 3),
        "channels": channels,
        "models": [model_id],
        "model_info": {model_id: model},
    }


def model_info(engine: EngineInfo) -> tuple[str, dict[str, str]]:
    """The engine's model as Deepgram describes one: a stable id and its name, version and architecture."""
    model_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"satellite-asr:{engine.name}:{engine.model}"))
    return model_id, {"name": engine.model, "version": __version__, "arch": engine.name}


def is_close_stream(message: WSMessage) -> bool:
    """Whether a message is `CloseStream` (or the empty binary message that does the same): what the
    client sent before its Close is still wanted then."""
    return (message.type == WSMsgType.BINARY and not message.data) or is_control(message, "CloseStream")


class DeepgramConnection(StreamingConnection):
    """What both of Deepgram's APIs do alike beyond any streaming API: an empty binary message ends the stream."""

    async def on_binary(self, data: bytes) -> None:
        if not data:  # Deepgram's old way to end a stream
            await self.end()
            return
        await super().on_binary(data)


class ListenConnection(DeepgramConnection):
    """A client of the live API (v1): its `Results`, `Finalize`, and the `Metadata` at the end."""

    protocol = PROTOCOL
    invalid_message = "SchemaError"

    def __init__(
        self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead, params: StreamParams
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, ListenParams)
        self.options = params
        self.created = created_now()
        self.model_id, self.model = model_info(core.engine_info)
        self.audio_hash = hashlib.sha256()
        self.pending = PendingFinals()
        """Each utterance whose final has not been sent, and the next one's interim result held back for it."""
        self.metadata_sent = False

    async def on_binary(self, data: bytes) -> None:
        await super().on_binary(data)
        self.audio_hash.update(data)

    async def opened(self) -> None:
        """Nothing: the live API says nothing before its first result."""

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Deepgram's `Error` message; `message` may quote what the client sent (`echoable`)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        text = echoable(message)
        await self.send({"type": "Error", "variant": code, "description": text, "message": text})

    def results(self, text: str, start: float, end: float, confidence: float, **flags: bool) -> dict[str, Any]:
        return {
            "type": "Results",
            "channel_index": CHANNEL,
            "duration": round(max(0.0, end - start), 3),
            "start": round(start, 3),
            **flags,
            "channel": {"alternatives": [{"transcript": text, "confidence": confidence, "words": []}]},
            "metadata": {"request_id": self.request_id, "model_info": self.model, "model_uuid": self.model_id},
        }

    async def send_event(self, event: SessionEvent) -> None:
        if isinstance(event, SpeechStarted):
            self.pending.started(event)
            await self.speech_started()
        elif isinstance(event, PartialTranscript):
            if not self.pending.holds(event):
                await self.interim(event.utterance_id, event.text)
        elif isinstance(event, FinalTranscript):
            await self.final(event)
        elif isinstance(event, SessionError):
            await self.error(event.code, event.message, counted=True)

    async def speech_started(self) -> None:
        """`SpeechStarted` (with `vad_events`) of the first utterance whose final is not sent, once: a
        later one's waits for the final and `UtteranceEnd` before it, as its interim results do."""
        if self.options.vad_events and (start := self.pending.announce()) is not None:
            await self.send({"type": "SpeechStarted", "channel": CHANNEL, "timestamp": round(start, 3)})

    async def interim(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, 0.0)
        flags = {"is_final": False, "speech_final": False, "from_finalize": False}
        await self.send(self.results(text, start, self.seconds, 0.0, **flags))

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final `Results` and `UtteranceEnd`, then what the next utterance's held
        back for them: its `SpeechStarted` and latest interim result."""
        self.pending.final(event.utterance_id)
        flags = {
            "is_final": True,
            "speech_final": event.is_speech_final and self.options.speech_final,
            "from_finalize": self.answers_flush(event.utterance_id),
        }
        await self.send(self.results(event.text, event.start, event.end, confidence(event), **flags))
        if self.options.utterance_end_ms is not None and event.text:
            await self.send({"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": round(event.end, 3)})
        await self.speech_started()
        for later, text in self.pending.released():
            await self.interim(later, text)

    def controls(self) -> dict[str, Control]:
        return {
            "KeepAlive": keep_alive,
            "Finalize": self.finalize,
            "CloseStream": self.end_stream,
            "Configure": self.configure,
        }

    async def configure(self, message: dict[str, Any]) -> None:
        """`keyterms` replace the stream's from its next utterance on (`[]` clears them, null keeps
        them); `features` (formatting) change nothing here. Answered with one `ConfigureSuccess` or
        `ConfigureFailure`; a failure applies nothing."""
        assert self.input is not None
        unknown = sorted(set(message) - {"type", "keyterms", "features"})
        features = message.get("features")
        keyterms = message.get("keyterms")
        code, problem = "CONFIGURE_INVALID", None
        if unknown:
            problem = f"Configure takes keyterms and features, not {', '.join(unknown)}"
        elif features is not None and not (
            isinstance(features, dict) and all(isinstance(on, bool) for on in features.values())
        ):
            problem = "features must be an object of true or false values"
        terms = None
        if problem is None and keyterms is not None:
            try:
                terms = replacing_terms(self.core, keyterms, "keyterms")
            except ProtocolError as exc:
                over = exc.code == "context_too_long"
                code, problem = ("CONFIGURE_KEYTERM_LIMIT_EXCEEDED" if over else code), exc.message
        if problem is not None:
            refused = ProtocolError(code, problem)  # the client's names quoted, at most MESSAGE_CHARS
            failure = {"type": "ConfigureFailure", "request_id": self.request_id, "code": code}
            await self.send({**failure, "description": echoable(refused.message)})
            return
        success: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": self.request_id}
        if terms is not None:
            self.input.session.change_decoding(terms=terms)
            success["keyterms"] = [echoable(term) for term in terms]
        await self.send(success)

    async def finalize(self, message: dict[str, Any]) -> None:
        """Ends the utterance in progress now (its final says `from_finalize`); with none in
        progress, an empty final says so: Pipecat waits for a `from_finalize` final to end its turn."""
        if not await self.flush_for_client():
            flags = {"is_final": True, "speech_final": False, "from_finalize": True}
            await self.send(self.results("", self.seconds, self.seconds, 0.0, **flags))

    async def closing(self) -> None:
        """`Metadata`, the stream's summary, sent once."""
        if self.metadata_sent:
            return
        self.metadata_sent = True
        summary = metadata(
            self.request_id,
            self.audio_hash.hexdigest(),
            self.created,
            self.seconds,
            self.options.channels,
            self.core.engine_info,
        )
        await self.send({"type": "Metadata", **summary})


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.Response:
    """A bad query is refused before the upgrade, as Deepgram does: a 400 naming the parameter."""
    return error_response(request.path, 400, "invalid_query_parameter", f"{exc.parameter}: {exc}")


def deepgram_api(path: str, name: str, parse: ApiParser, connection: type[DeepgramConnection]) -> Api:
    return Api(path, name, parse, connection, is_close_stream, refuse_parameters)


LISTEN = deepgram_api(PATH, "Deepgram's live streaming API", parse_params, ListenConnection)
