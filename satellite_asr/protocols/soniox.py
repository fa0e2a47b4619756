"""Soniox's real-time speech-to-text API at `/transcribe-websocket` (docs/soniox.md): wire messages
<-> `Session` calls.

Unlike the other APIs served here, the stream's settings come in its first message, a JSON config
(with the key, when the connection did not carry it); the session opens then. Audio comes as binary
messages. Each answer is a list of tokens: an utterance's partials are its non-final tokens, re-sent
whole each time; its final is its final tokens, sent once, followed by `<end>` with endpoint
detection on. A client's `finalize` ends the utterance in progress now and is answered by `<fin>`
after that utterance's final tokens. An empty message ends the audio: what is still to come, then
`finished` and the Close. Every error is `{"error_code", "error_message"}`, then the Close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.access import check_key
from satellite_asr.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, ReadAhead, checked_biasing, echoable, json_object, soniox_error
from satellite_asr.protocols.iso639 import engine_language
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    StreamParams,
    check_names,
    confidence,
    keep_alive,
    number_within,
    refuse_in_band,
    replacing_terms,
)
from satellite_asr.session import SessionOptions

PATH = "/transcribe-websocket"
PROTOCOL = "soniox"
ENCODINGS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "mulaw": "pcmu", "alaw": "pcma"}
"""Soniox's names of the raw formats this server decodes, and its own."""
END, FINALIZED = "<end>", "<fin>"
STATUS = {
    "missing_api_key": 401,
    "invalid_api_key": 401,
    "timeout": 408,
    "idle_timeout": 408,
    "engine_error": 500,
    "server_busy": 503,
    "shutdown": 503,
}
"""Soniox's HTTP-like `error_code` of each of the daemon's error codes; any other is input refused, 400."""
CLOSE_BY_STATUS = {
    400: WSCloseCode.POLICY_VIOLATION,
    401: WSCloseCode.POLICY_VIOLATION,
    408: WSCloseCode.GOING_AWAY,
    503: WSCloseCode.TRY_AGAIN_LATER,
}
"""The Close after an error, by its `error_code` (500: the server's fault, 1011)."""
CLOSE_CODES = {"shutdown": WSCloseCode.GOING_AWAY, "timeout": WSCloseCode.POLICY_VIOLATION}
"""The Close after these errors, whatever their `error_code`: `timeout`'s as on `/v1/stream`."""
BOOLEANS = {
    "language_hints_strict",
    "enable_language_identification",
    "enable_endpoint_detection",
    "enable_speaker_diarization",
}
NUMBERS = {
    "max_endpoint_delay_ms": (500, 3000, True),
    "endpoint_sensitivity": (-1.0, 1.0, False),
    "endpoint_latency_adjustment_level": (0, 3, True),
}
"""Soniox's endpoint tuning, in its ranges (whole or not): checked, not used; the daemon's own turn
detection decides when an utterance ends."""
TEXTS = {"api_key", "model", "audio_format", "client_reference_id"}
FIELDS = {"sample_rate", "num_channels", "language_hints", "context", "translation", *BOOLEANS, *NUMBERS, *TEXTS}
CONTEXT_FIELDS = {"general", "text", "terms", "translation_terms"}
MAX_REFERENCE_CHARS = 256


@dataclass(frozen=True)
class SonioxConfig:
    """The stream's settings from its first message."""

    encoding: str
    sample_rate: int
    channels: int
    language: str | None
    """The one language hinted (or the daemon's default); None with several: the engine detects it."""
    identify_language: bool
    endpoints: bool
    context: str
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate, self.channels)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings, partials=True, language=self.language, context=self.context, terms=self.terms
        )


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in the first message; the URL may carry only the daemon's `api_key`."""
    check_names(query, set(), set())
    return None


def in_band_key(message: WSMessage) -> str | None:
    """The key a first message carries in its `api_key`, if it is a JSON object with one."""
    config = json_object(message.data) if message.type == WSMsgType.TEXT else None
    key = config.get("api_key") if isinstance(config, dict) else None
    return key if isinstance(key, str) else None


def parse_config(message: WSMessage, core: Core) -> SonioxConfig:
    """The stream's settings, or `ProtocolError` `invalid_config`."""
    if message.type != WSMsgType.TEXT:
        raise ProtocolError("invalid_config", "the first message must be the JSON configuration, not audio")
    config = json_object(message.data)
    if isinstance(config, str):
        raise ProtocolError("invalid_config", f"the configuration must be a JSON object; this one {config}")
    given = {name: value for name, value in config.items() if value is not None}  # null: the default
    unknown = sorted(set(given) - FIELDS)
    if unknown:
        raise ProtocolError("invalid_config", f"unknown configuration field {echoable(unknown[0])!r}")
    for name in TEXTS & set(given):
        if not isinstance(given[name], str):
            raise ProtocolError("invalid_config", f"{name} must be a text")
    for name in BOOLEANS & set(given):
        if not isinstance(given[name], bool):
            raise ProtocolError("invalid_config", f"{name} must be true or false")
    for name, (low, high, whole) in NUMBERS.items():
        if name in given and not number_within(given[name], low, high, whole):
            kind = "a whole number" if whole else "a number"
            raise ProtocolError("invalid_config", f"{name} must be {kind} from {low} to {high}")
    if given.get("enable_speaker_diarization"):
        raise ProtocolError("invalid_config", "this server does not do speaker diarization; leave it false")
    if "translation" in given:
        raise ProtocolError("invalid_config", "this server does not translate; leave translation out")
    if not given.get("model"):
        raise ProtocolError("invalid_config", "model is required")
    if len(given.get("client_reference_id", "")) > MAX_REFERENCE_CHARS:
        raise ProtocolError("invalid_config", f"client_reference_id is over {MAX_REFERENCE_CHARS} characters")
    encoding = given.get("audio_format")
    if encoding not in ENCODINGS:
        named = f"audio_format {echoable(encoding)!r} is not one it decodes" if encoding else "audio_format is missing"
        raise ProtocolError("invalid_config", f"{named}: this server takes raw audio, one of {', '.join(ENCODINGS)}")
    rate, channels = given.get("sample_rate"), given.get("num_channels")
    if not isinstance(rate, int) or not number_within(rate, MIN_RATE, MAX_RATE, True):
        raise ProtocolError("invalid_config", f"sample_rate must be a whole number from {MIN_RATE} to {MAX_RATE}")
    if not isinstance(channels, int) or not number_within(channels, 1, MAX_CHANNELS, True):
        raise ProtocolError("invalid_config", f"num_channels must be a whole number from 1 to {MAX_CHANNELS}")
    hints = given.get("language_hints", [])
    if not isinstance(hints, list):
        raise ProtocolError("invalid_config", "language_hints must be a list of language codes")
    try:
        languages = {engine_language(core, hint, "language_hints") for hint in hints} - {None}
        text, terms = context_biasing(core, given.get("context"))
    except ProtocolError as exc:
        raise ProtocolError("invalid_config", exc.message) from None
    identify = given.get("enable_language_identification", False)
    language = next(iter(languages)) if len(languages) == 1 else None
    return SonioxConfig(
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
        language=language if languages else core.settings.default_language,
        identify_language=identify,
        endpoints=given.get("enable_endpoint_detection", False),
        context=text,
        terms=terms,
    )


def context_biasing(core: Core, context: object) -> tuple[str, tuple[str, ...]]:
    """The biasing text and terms of Soniox's `context`: a text (its older form) is the text; an
    object's `text` and `terms` are used, its `general` items and `translation_terms` checked and not."""
    if context is None:
        return "", ()
    if isinstance(context, str):
        checked_biasing(core, context, (), "context", "context")
        return context, ()
    if not isinstance(context, dict):
        raise ProtocolError("invalid_config", "context must be a text or an object")
    unknown = sorted(set(context) - CONTEXT_FIELDS)
    if unknown:
        raise ProtocolError("invalid_config", f"context has no field {echoable(unknown[0])!r}")
    text, general = context.get("text", ""), context.get("general", [])
    translation_terms, terms_given = context.get("translation_terms", []), context.get("terms", [])
    if not isinstance(text, str | None):
        raise ProtocolError("invalid_config", "context.text must be a text")
    if isinstance(general, dict):
        general = [{"key": key, "value": value} for key, value in general.items()]
    if not all_pairs(general, "key", "value"):
        raise ProtocolError("invalid_config", "context.general must be a list of key and value texts")
    if not all_pairs(translation_terms, "source", "target"):
        raise ProtocolError("invalid_config", "context.translation_terms must be a list of source and target texts")
    if not isinstance(terms_given, list | None):
        raise ProtocolError("invalid_config", "context.terms must be a list of texts")
    text, terms_given = text or "", terms_given or []
    terms = replacing_terms(core, terms_given, "context.terms")
    checked_biasing(core, text, terms, "context", "context.text and context.terms")
    return text, terms


def all_pairs(items: object, first: str, second: str) -> bool:
    """Whether `items` is absent (null) or a list of objects whose `first` and `second` are texts."""
    return items is None or (
        isinstance(items, list)
        and all(
            isinstance(item, dict) and all(isinstance(item.get(key), str) for key in (first, second)) for item in items
        )
    )


def is_end_of_audio(message: WSMessage) -> bool:
    """An empty message, binary or text, ends the audio: what the client sent before its Close is still wanted."""
    return message.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not message.data


class SonioxConnection(InOrderConnection):
    """A client of Soniox's real-time API: its configuration, audio, `finalize` and `keepalive`, and
    each utterance's tokens."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    errors_end_stream = True

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        self.config: SonioxConfig | None = None
        self.spoken = False
        """Words were sent: the next token of words starts with a space."""
        self.final_ms = 0

    async def read_settings(self, message: WSMessage) -> None:
        """The key (the connection's, or the configuration's) first, so that a client without it learns
        nothing of the server from its configuration's refusal; then the configuration and the session."""
        refusal = check_key(self.request, in_band_key(message), "api_key")
        if refusal is not None:
            raise ProtocolError(refusal[1], refusal[2])
        self.config = self.params = parse_config(message, self.core)
        self.open_session()

    async def opened(self) -> None:
        """Nothing: Soniox's first message is its first tokens."""

    def audio_ms(self) -> dict[str, int]:
        return {"final_audio_proc_ms": self.final_ms, "total_audio_proc_ms": round(self.seconds * 1000)}

    async def closing(self) -> None:
        """`finished`, once the audio's last tokens are sent: all of it is final now."""
        self.final_ms = round(self.seconds * 1000)
        await self.send({"tokens": [], **self.audio_ms(), "finished": True})

    async def close_by_server(self, reason: str) -> None:
        """Idle timeout or shutdown, once the finals are sent: Soniox's error (408, 503), then the Close."""
        self.finished = True
        await self.error(
            reason, self.server_close_sentence(reason), counted=True
        )  # the server's own end: in no error metric, as elsewhere

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Soniox's error message, then the Close, for every error: Soniox has no warning. `message`
        may quote the client."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        self.finished = self.failed = True
        status = STATUS.get(code, 400)
        with_audio = self.audio_ms() if self.input is not None else {}
        try:
            await self.send({"tokens": [], **with_audio, **soniox_error(status, message)})
        finally:
            await self.close(CLOSE_CODES.get(code) or CLOSE_BY_STATUS.get(status, WSCloseCode.INTERNAL_ERROR), code)

    def tokens(
        self, text: str, start: float, end: float, final: bool, sureness: float, language: str | None
    ) -> list[dict[str, Any]]:
        """Each word a token spanning the utterance (the engine gives no word timings); a word after
        words already sent starts with a space, so that the tokens joined are the transcript."""
        span = {"start_ms": round(start * 1000), "end_ms": round(max(start, end) * 1000)}
        assert self.config is not None
        named = {"language": language} if self.config.identify_language and language else {}
        tokens = []
        leading = self.spoken
        for word in text.split():
            tokens.append(
                {"text": f" {word}" if leading else word, **span, "confidence": sureness, "is_final": final, **named}
            )
            leading = True
        return tokens

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.send({"tokens": self.partial_tokens(utterance_id, text), **self.audio_ms()})

    def partial_tokens(self, utterance_id: int, text: str) -> list[dict[str, Any]]:
        assert self.config is not None
        start = self.pending.starts.get(utterance_id, self.seconds)
        return self.tokens(text, start, self.seconds, False, 0.0, self.config.language)

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final tokens, then `<fin>` when it answers the client's `finalize`, else
        `<end>` with endpoint detection on (when there were words, or a partial of them to take back);
        then the partial of the next utterance held back for it."""
        assert self.config is not None
        shown = self.pending.final(event.utterance_id)
        language = event.language or self.config.language
        tokens = self.tokens(event.text, event.start, event.end, True, confidence(event), language)
        self.spoken = self.spoken or bool(tokens)
        self.final_ms = max(self.final_ms, round(event.end * 1000))
        marker = {"start_ms": self.final_ms, "end_ms": self.final_ms, "confidence": 1.0, "is_final": True}
        answered_before = self.flush_answered
        if self.answers_flush(event.utterance_id) and not answered_before:  # the first final it ends gets `<fin>`
            tokens.append({"text": FINALIZED, **marker})
        elif self.config.endpoints and (tokens or shown):
            tokens.append({"text": END, **marker})
        for later, text in self.pending.released():  # in the final's message, not through release_held
            tokens.extend(self.partial_tokens(later, text))
            self.pending.shown.add(later)
        if tokens:
            await self.send({"tokens": tokens, **self.audio_ms()})

    async def on_binary(self, data: bytes) -> None:
        """Audio; an empty message ends it."""
        if not data:
            await self.end()
            return
        await super().on_binary(data)

    async def on_text(self, data: str) -> None:
        """A control message; an empty one ends the audio."""
        if not data:
            await self.end()
            return
        await super().on_text(data)

    def controls(self) -> dict[str, Control]:
        return {"finalize": self.finalize, "keepalive": keep_alive}

    async def finalize(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; its final tokens come with `<fin>`, or `<fin>` alone
        when none was in progress. `trailing_silence_ms` is checked and not used."""
        silence = message.get("trailing_silence_ms")
        if silence is not None and not number_within(silence, 0, math.inf, True):
            raise ProtocolError("invalid_message", "trailing_silence_ms must be a whole number of milliseconds")
        if not await self.flush_for_client() and not self.failed:
            marker = {"start_ms": self.final_ms, "end_ms": self.final_ms, "confidence": 1.0, "is_final": True}
            await self.send({"tokens": [{"text": FINALIZED, **marker}], **self.audio_ms()})


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A query parameter (Soniox's URL takes none) is refused after the upgrade, as every Soniox error is."""
    error = {"tokens": [], **soniox_error(400, f"{exc.parameter}: {exc}")}  # Pipecat reads `tokens` first
    return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, is_end_of_audio)


SONIOX_REALTIME = Api(
    PATH,
    "Soniox's real-time speech-to-text API",
    parse_query,
    SonioxConnection,
    is_end_of_audio,
    refuse_parameters,
)
