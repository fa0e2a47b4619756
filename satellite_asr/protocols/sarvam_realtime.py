"""Sarvam AI's realtime speech-to-text API at `/speech-to-text-realtime/ws` (docs/sarvam.md): wire
messages <-> `Session` calls, so that Pipecat's `SarvamRealtimeSTTService` and the `sarvamai` SDK's
`speech_to_text_realtime_streaming` reach the daemon by their URL alone.

The URL's query sets the stream; a bad one is refused after the upgrade: a fatal `error` (its
`status_code` 400) and the Close 4000, whose reason is the sentence, as Sarvam's. Messages are JSON
named by `event`: `audio_input` (base64 PCM), `speech_start` / `speech_end` (the client's turns with
`endpointing=manual`), `flush`, `config.update`, `ping`, `end`. The daemon answers `session.begin`,
`vad.speech_start` / `vad.speech_end` (`endpointing=vad`), `transcript.partial` (not with
`stream_type=simulated`), one `transcript.final` per utterance, `config.updated`, `pong`,
`session.end` and `error` (`{"code", "is_fatal", "message"}`; a non-fatal one leaves the stream going).
The API key header, the language codes, the models' check, modes and key terms are Sarvam's stream's
(sarvam.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import WSMessage, web
from multidict import MultiDict, MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.config import ConfigError, coerce
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SpeechStarted
from satellite_asr.protocols import ProtocolError, checked_biasing, close_reason, echoable
from satellite_asr.protocols.openai_realtime_config import MANUAL_MIN_SPEECH_MS, TurnDetection
from satellite_asr.protocols.sarvam import (
    LANGUAGES,
    SAMPLE_RATES,
    HeldSignals,
    check_model_and_mode,
    engine_language,
    parse_terms,
    sarvam_code,
)
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ParameterError,
    StreamParams,
    base64_audio,
    boolean_parameter,
    check_fields,
    check_names,
    is_control,
    refuse_in_band,
)
from satellite_asr.session import SessionOptions

PATH = "/speech-to-text-realtime/ws"
PROTOCOL = "sarvam-realtime"
LANGUAGES_REALTIME = tuple("or-IN" if code == "od-IN" else code for code in LANGUAGES)
"""The realtime stream's codes: the stream's, Odia written `or-IN`; `auto` asks for detection."""
MODELS = ("saaras:v3-realtime", "saaras:v4")
"""Which one is asked changes nothing here (the daemon's engine decodes): checked, not applied."""
ENCODINGS = {"linear16": "s16le", "mulaw": "pcmu", "alaw": "pcma"}
"""Sarvam's encodings the daemon decodes; `linear32` is refused."""
STREAM_TYPES = ("fast", "balanced", "simulated")
"""`fast` and `balanced` both get the daemon's partials; `simulated` none."""
ENDPOINTING = ("vad", "manual")
VAD_SETTINGS = {
    "threshold": "vad_threshold",
    "prefix_padding_ms": "speech_pad_ms",
    "silence_duration_ms": "silence_ms",
    "min_speech_duration_ms": "min_speech_ms",
}
"""Sarvam's VAD tuning (with `endpointing=vad`) and the daemon setting each becomes, checked as it;
`silence_duration_ms` alone also makes turns end after that silence (the daemon's fixed endpointing)."""
KNOWN = {
    "language_code",
    "model",
    "stream_type",
    "mode",
    "prompt",
    "keyterms",
    "endpointing",
    "encoding",
    "sample_rate",
    "return_timestamps",
    *VAD_SETTINGS,
}
UPDATABLE = {"language_code", "prompt", "mode", "stream_type", "endpointing", *VAD_SETTINGS} - {"prefix_padding_ms"}
"""The fields of `config.update`: each checked as in the URL. The language, prompt and stream type
apply from the next utterance, as Sarvam's do; a change of endpointing or VAD tuning is refused
(`invalid_config`), since a session's endpointing is fixed when it opens."""
MAX_AUDIO_BYTES = 262144
"""Most decoded audio in one `audio_input` (over 8 s at 16 kHz; Pipecat sends 50 ms)."""
FATAL_STATUS = {"server_busy": 503, "idle_timeout": 408, "shutdown": 503}
"""The HTTP status a fatal error stands for, which Sarvam's fatal errors carry as `status_code`."""


@dataclass(frozen=True)
class RealtimeParams:
    """The stream's settings from the URL's query."""

    query: dict[str, str]
    """The query as given, which a `config.update` is checked against."""
    sample_rate: int
    encoding: str
    language: str | None
    language_code: str
    model: str
    mode: str
    stream_type: str
    endpointing: str
    prompt: str
    terms: tuple[str, ...]
    return_timestamps: bool
    vad: dict[str, Any]
    """The daemon's endpointing settings Sarvam's VAD tuning set."""

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate, 1)

    def session_options(self, core: Core) -> SessionOptions:
        if self.endpointing == "manual":
            vad: dict[str, Any] | None = {"turn_detection": "manual", "min_speech_ms": MANUAL_MIN_SPEECH_MS}
        else:
            vad = self.vad or None
        return SessionOptions.from_settings(
            core.settings,
            vad=vad,
            partials=self.stream_type != "simulated",
            language=self.language,
            context=self.prompt,
            terms=self.terms,
        )

    def same_endpointing(self, other: RealtimeParams) -> bool:
        """Whether `other` differs from these settings in what an utterance is decoded with alone (the
        language, prompt and stream type), or in what is checked, not applied, or in VAD tuning that
        `endpointing=manual` leaves unused: what a session can take from its next utterance on."""
        unused_vad = self.vad if other.endpointing == self.endpointing == "manual" else other.vad
        decoding = replace(
            other,
            query=self.query,
            model=self.model,
            mode=self.mode,
            stream_type=self.stream_type,
            language=self.language,
            language_code=self.language_code,
            prompt=self.prompt,
            vad=unused_vad,
        )
        return decoding == self


def one_of(query: MultiMapping[str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = query.get(name, default)
    if value not in choices:
        raise ParameterError(name, f"{name} must be one of {', '.join(choices)}, got {echoable(value)!r}")
    return value


def vad_overrides(query: MultiMapping[str], core: Core) -> dict[str, Any]:
    """Sarvam's VAD tuning as the daemon's endpointing settings, each checked as that setting."""
    values: dict[str, Any] = {}
    for name, setting in VAD_SETTINGS.items():
        raw = query.get(name)
        if raw is None:
            continue
        try:
            values[setting] = coerce(setting, raw)
        except ConfigError as exc:
            raise ParameterError(name, f"{name} {str(exc).split(': ', 1)[-1]}") from None
    # only the silence that ends a turn makes turns end by it (OpenAI's `server_vad`); the other knobs
    # leave the daemon's turn detection, which ends a command judged complete sooner
    silence = values.pop("silence_ms", None)
    overrides = (
        {} if silence is None else TurnDetection("server_vad", silence_duration_ms=silence).vad_overrides(core.settings)
    )
    return overrides | {"threshold" if name == "vad_threshold" else name: value for name, value in values.items()}


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    check_names(query, KNOWN, set())
    check_model_and_mode(query, MODELS)
    asked = query.get("language_code", "auto")
    language = engine_language(core, asked, "language_code", "auto", LANGUAGES_REALTIME)
    rate = query.get("sample_rate", "16000")
    if rate not in {str(known) for known in SAMPLE_RATES}:
        raise ParameterError("sample_rate", f"sample_rate must be 8000 or 16000, got {echoable(rate)!r}")
    encoding = query.get("encoding", "linear16")
    if encoding not in ENCODINGS:
        known = ", ".join(ENCODINGS)
        raise ParameterError("encoding", f"encoding must be one of {known} (mono), got {echoable(encoding)!r}")
    prompt = query.get("prompt", "")
    try:
        checked_biasing(core, prompt, (), "prompt", "prompt")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "prompt") from None
    return RealtimeParams(
        query=dict(query),
        sample_rate=int(rate),
        encoding=encoding,
        language=language,
        language_code=asked,
        model=query.get("model", MODELS[0]),
        mode=query.get("mode", "transcribe"),
        stream_type=one_of(query, "stream_type", STREAM_TYPES, "balanced"),
        endpointing=one_of(query, "endpointing", ENDPOINTING, "vad"),
        prompt=prompt,
        terms=parse_terms(core, query.get("keyterms"), "keyterms"),
        return_timestamps=boolean_parameter(query, "return_timestamps", False),
        vad=vad_overrides(query, core),
    )


def error_message(code: str, message: str, *, fatal: bool = False, status: int | None = None) -> dict[str, Any]:
    """Sarvam's realtime error; a fatal refusal also carries the HTTP status it stands for."""
    error: dict[str, Any] = {"event": "error", "code": code, "is_fatal": fatal, "message": echoable(message)}
    if status is not None:
        error["status_code"] = status
    return error


def ends_stream(message: WSMessage) -> bool:
    """`end`: what the client sent before its Close is still wanted."""
    return is_control(message, "end", "event")


class SarvamRealtimeConnection(HeldSignals):
    """A client of the realtime API: its audio, turns, flushes, updates and end; each utterance's
    VAD events, partials and final."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    type_field = "event"
    opened_at = 0.0
    """When the session opened (`time.monotonic`), for `session.end`."""

    def open_session(self) -> None:
        self.language_codes: dict[int, str] = {}
        """The `language_code` each utterance whose final is not sent began with (`config.update`
        changes it from the next utterance on)."""
        super().open_session()

    @property
    def options(self) -> RealtimeParams:
        assert isinstance(self.params, RealtimeParams)
        return self.params

    async def opened(self) -> None:
        """`session.begin`, echoing the settings the stream runs with (endpointing as `turn_detection`)."""
        self.opened_at = time.monotonic()
        options = self.options
        config: dict[str, Any] = {
            "model": options.model,
            "language_code": options.language_code,
            "encoding": options.encoding,
            "sample_rate": options.sample_rate,
            "stream_type": options.stream_type,
            "mode": options.mode,
            "prompt": options.prompt or None,
            "turn_detection": options.endpointing,
            "return_timestamps": options.return_timestamps,
        }
        for name in VAD_SETTINGS:
            value = options.query.get(name)
            config[name] = None if value is None else float(value) if name == "threshold" else int(value)
        await self.send({"event": "session.begin", "request_id": self.request_id, "config": config})

    def signals_wanted(self) -> bool:
        """`vad.*` events with `endpointing=vad` alone: with `manual` the client's turns are the turns."""
        return self.options.endpointing == "vad"

    async def send_signal(self, utterance_id: int, kind: str) -> None:
        event = "vad.speech_start" if kind == "START_SPEECH" else "vad.speech_end"
        await self.send({"event": event, "utterance_idx": utterance_id - 1})

    async def speech_started(self, event: SpeechStarted) -> None:
        self.language_codes[event.utterance_id] = self.options.language_code
        await super().speech_started(event)

    def language(self, utterance_id: int, event_language: str | None) -> dict[str, Any]:
        """The detected language, which Sarvam's transcripts carry when the utterance began with
        `language_code=auto` alone."""
        if self.language_codes.pop(utterance_id, self.options.language_code) != "auto":
            return {}
        return {"language": sarvam_code(event_language, "auto", "auto", LANGUAGES_REALTIME)}

    async def partial(self, utterance_id: int, text: str) -> None:
        """The utterance so far (no `language`: the engine tells it with the final alone)."""
        await self.send({"event": "transcript.partial", "utterance_idx": utterance_id - 1, "text": text.strip()})

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's one `transcript.final`, empty when it had no words."""
        self.pending.final(event.utterance_id)
        message: dict[str, Any] = {
            "event": "transcript.final",
            "utterance_idx": event.utterance_id - 1,
            "text": event.text.strip(),
        } | self.language(event.utterance_id, event.language)
        if self.options.return_timestamps:
            message["start_s"], message["end_s"] = event.span
        await self.send(message)
        await self.release_signals()
        await self.release_held()

    async def closing(self) -> None:
        """`session.end`: the session's length, utterances and audio."""
        await self.send(
            {
                "event": "session.end",
                "request_id": self.request_id,
                "total_duration_s": round(time.monotonic() - self.opened_at, 3),
                "total_utterances": self.input.session.utterances if self.input is not None else 0,
                "audio_duration_s": round(self.seconds, 3),
            }
        )

    async def close_by_server(self, reason: str) -> None:
        """Idle timeout or shutdown, once the finals are sent: the fatal error telling why,
        `session.end`, then the Close (1008 for inactivity, as Sarvam's; else 1001)."""
        self.finished = True
        code = 1008 if reason == "idle_timeout" else 1001
        try:
            await self.error(reason, self.server_close_sentence(reason), fatal=True, counted=True)
            await self.closing()
        finally:
            await self.close(code, reason)

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_message(code, message)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Sarvam's error, `is_fatal` when the connection is closed next (no session could open)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        await self.send(error_message(code, message, fatal=fatal, status=FATAL_STATUS.get(code) if fatal else None))

    async def on_binary(self, data: bytes) -> None:
        raise ProtocolError("invalid_message", 'audio comes as JSON {"event": "audio_input", "audio": base64}')

    def controls(self) -> dict[str, Control]:
        return {
            "audio_input": self.audio_input,
            "speech_start": self.speech_start,
            "speech_end": self.speech_end,
            "flush": self.flush,
            "config.update": self.config_update,
            "ping": self.ping,
            "end": self.end_session,
        }

    async def audio_input(self, message: dict[str, Any]) -> None:
        check_fields(message, "audio_input", {"audio"}, "event")
        await super().on_binary(base64_audio(message, "audio_input", MAX_AUDIO_BYTES))

    def check_manual(self, message: dict[str, Any], kind: str) -> None:
        check_fields(message, kind, set(), "event")
        if self.options.endpointing != "manual":
            raise ProtocolError("invalid_message", f"{kind} is for endpointing=manual; this stream's VAD ends turns")

    async def speech_start(self, message: dict[str, Any]) -> None:
        """The client's turn begins: nothing more to do (the audio that follows is the turn's)."""
        self.check_manual(message, "speech_start")

    async def speech_end(self, message: dict[str, Any]) -> None:
        """The client's turn ends: its final now."""
        self.check_manual(message, "speech_end")
        await self.flush_for_client()

    async def flush(self, message: dict[str, Any]) -> None:
        """The audio so far finalized now (the utterance in progress ends), in either endpointing."""
        check_fields(message, "flush", set(), "event")
        await self.flush_for_client()

    async def config_update(self, message: dict[str, Any]) -> None:
        """Each field checked as in the URL. A new language, prompt or stream type applies from the
        next utterance on (`config.updated`); a new endpointing or VAD tuning is `invalid_config`,
        and the stream goes on as it was."""
        fields = {name: value for name, value in message.items() if name != "event"}
        unknown = sorted(set(fields) - UPDATABLE)
        if unknown:
            raise ProtocolError("invalid_config", f"config.update has no field {echoable(unknown[0])!r}")
        query = MultiDict(self.options.query)
        for name, value in fields.items():
            if value is None or (name == "prompt" and value == ""):
                query.pop(name, None)
            elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ProtocolError("invalid_config", f"config.update's {name} must be text or a number")
            else:
                query[name] = str(value)
        try:
            updated = parse_query(query, self.core)
        except ParameterError as exc:
            raise ProtocolError("invalid_config", f"{exc.parameter}: {exc}") from None
        assert isinstance(updated, RealtimeParams) and self.input is not None
        if not self.options.same_endpointing(updated):
            names = ", ".join(sorted(fields.keys() & {"endpointing", *VAD_SETTINGS}))
            sentence = f"{names}: a stream's endpointing is fixed when it opens here; connect again with it in the URL"
            raise ProtocolError("invalid_config", sentence)
        options = updated.session_options(self.core)
        self.input.session.change_decoding(
            language=options.language, context=options.context, partials=options.partials
        )
        self.params = updated
        await self.send({"event": "config.updated", "applied": sorted(fields)})

    async def ping(self, message: dict[str, Any]) -> None:
        check_fields(message, "ping", set(), "event")
        await self.send({"event": "pong"})

    async def end_session(self, message: dict[str, Any]) -> None:
        """The pending utterance's final, `session.end`, then the Close 1000."""
        check_fields(message, "end", set(), "event")
        await self.end()


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query refused after the upgrade, as Sarvam's: the fatal error, then the Close 4000 whose
    reason is the sentence (Pipecat reports it and does not retry)."""
    sentence = f"{exc.parameter}: {exc}"
    error = error_message("invalid_request_error", sentence, fatal=True, status=400)
    return await refuse_in_band(core, request, ws, error, 4000, ends_stream, close_reason(echoable(sentence)))


STREAMING = Api(
    PATH,
    "Sarvam AI's realtime speech-to-text API",
    parse_query,
    SarvamRealtimeConnection,
    ends_stream,
    refuse_parameters,
)
