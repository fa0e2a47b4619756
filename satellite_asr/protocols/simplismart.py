"""Simplismart's speech-to-text APIs (docs/simplismart.md), so that LiveKit's Simplismart plugin
(`simplismart.STT`) reaches the daemon by its `base_url` alone: with `streaming=True` its WebSocket at
`/ws/audio`, without it `POST /predict`.

The stream's settings come in its first message, `{"language": ...}`; then audio comes as binary
frames of 16 kHz 16-bit mono PCM. Each utterance's final goes out as one binary frame holding its
text in UTF-8 (the plugin reads nothing else); there are no partials. An error is a text message
`{"type": "error", "code", "message"}`; a refused configuration is followed by the Close 1008, any
later error leaves the stream going. The stream ends with the client's Close.

`POST /predict` takes a JSON body: the audio base64 in `audio_data` (any container FFmpeg reads) and
the decoding options; it answers `{"transcription": [...], "timestamps": [...], "info": {...},
"request_id"}`, through the upload path every API shares (`uploads`).
"""

from __future__ import annotations

import binascii
import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.limits import write_within
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, echoable, json_object
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    SettingsMessageConnection,
    StreamParams,
    check_names,
    number_within,
    refusing_in_band,
)
from satellite_asr.protocols.uploads import (
    READ_BYTES,
    RequestError,
    UploadApi,
    UploadPace,
    check_content_encoding,
    read_limited,
    too_large,
    upload_options,
)
from satellite_asr.session import SessionOptions

STREAM_PATH = "/ws/audio"
PATH = "/predict"
PROTOCOL = "simplismart"
REST_PROTOCOL = "simplismart-rest"
SAMPLE_RATE = 16000
"""The stream's audio: 16 kHz 16-bit mono PCM, the only format the plugin sends."""
MAX_TERMS = 100


@dataclass(frozen=True)
class SimplismartConfig:
    """The stream's settings from its configuration message."""

    language: str | None

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", SAMPLE_RATE)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=False, language=self.language)


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in the configuration message; the URL carries none (`api_key` aside)."""
    check_names(query, set(), set())
    return None


def parse_config(message: WSMessage, core: Core) -> SimplismartConfig:
    """The stream's settings, or `ProtocolError` `invalid_config` saying what is wrong."""
    config = json_object(message.data) if message.type == WSMsgType.TEXT else "is audio"
    if isinstance(config, str):
        raise ProtocolError(
            "invalid_config", f'the first message must be the configuration, {{"language": ...}}; this one {config}'
        )
    unknown = sorted(set(config) - {"language"})
    if unknown:
        raise ProtocolError("invalid_config", f"the configuration has no field {echoable(unknown[0])!r}")
    try:
        language = checked_language(core, config.get("language"), "language")
    except ProtocolError as exc:
        raise ProtocolError("invalid_config", exc.message) from None
    return SimplismartConfig(language or core.settings.default_language)


def error_event(code: str, message: str) -> dict[str, Any]:
    """The error, a text message (the plugin's transcripts are binary); `message` may quote the client."""
    return {"type": "error", "code": code, "message": echoable(message)}


def ends_stream(message: WSMessage) -> bool:
    """No message ends the stream: the client's Close does."""
    return False


class SimplismartConnection(SettingsMessageConnection):
    """A client of the streaming API: its configuration and audio; each utterance's final text."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"

    def parse_settings(self, message: WSMessage) -> SimplismartConfig:
        return parse_config(message, self.core)

    async def opened(self) -> None:
        """Nothing: the configuration has no answer."""

    def partials_wanted(self) -> bool:
        return False

    async def partial(self, utterance_id: int, text: str) -> None:
        """Never sent: the API has no partials."""

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's text as one binary frame; none for an utterance without words."""
        self.pending.final(event.utterance_id)
        text = event.text.strip()
        if text and not self.ws.closed:
            await write_within(self.ws.send_bytes(text.encode()), self.core.settings.write_timeout_s, self.transport)
        await self.release_held()

    async def closing(self) -> None:
        """Nothing: the Close ends the stream."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    async def on_text(self, data: str) -> None:
        raise ProtocolError("invalid_message", "after the configuration, audio comes as binary frames of 16 kHz PCM")

    def controls(self) -> dict[str, Control]:
        return {}


STREAMING = Api(
    STREAM_PATH,
    "Simplismart's streaming speech-to-text API",
    parse_query,
    SimplismartConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)


CHECKED_NOT_APPLIED: dict[str, tuple[str, float, float, bool]] = {
    "vad_onset": ("number", 0.0, 1.0, True),
    "vad_offset": ("number", 0.0, 1.0, True),
    "min_speech_duration_ms": ("whole", 0, 60000, False),
    "max_speech_duration_s": ("number", 0.0, 3600.0, False),
    "min_silence_duration_ms": ("whole", 0, 60000, False),
    "speech_pad_ms": ("whole", 0, 10000, False),
    "compression_ratio_threshold": ("number", 0.0, 100.0, True),
    "beam_size": ("whole", 1, 64, False),
    "temperature": ("number", 0.0, 2.0, False),
    "max_tokens": ("number", 1.0, 100000.0, True),
    "log_prob_threshold": ("number", -100.0, 0.0, True),
    "length_penalty": ("number", 0.0, 10.0, False),
    "repetition_penalty": ("number", 0.0, 10.0, False),
}
"""The decoding options taken and checked (kind, low, high, whether null is taken), but not applied:
the daemon's own endpointing and engine decide (docs/simplismart.md)."""
FLAGS = {"without_timestamps", "vad_filter", "multilingual", "strict_hallucination_reduction"}
FIELDS = {"audio_data", "language", "model", "task", "vad_model", "initial_prompt", "hotwords", "num_speakers"}
FIELDS |= FLAGS | set(CHECKED_NOT_APPLIED)
VAD_MODELS = ("silero", "frame")


@dataclass(frozen=True)
class PredictRequest:
    """What a `POST /predict` asks: the audio, the session's options, and whether it wants timestamps."""

    audio: bytes
    options: SessionOptions
    timestamps: bool


def bad(param: str, message: str) -> RequestError:
    return RequestError("invalid_value", message, param=param)


def parse_predict(body: object, core: Core, max_bytes: int) -> PredictRequest:
    """The request's audio and options, or `RequestError` naming the field at fault."""
    if not isinstance(body, dict):
        raise RequestError("invalid_request", "the body must be a JSON object with the audio in audio_data")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise bad(unknown[0], f"unknown field {echoable(unknown[0])!r}")
    for name in sorted(FLAGS & set(body)):
        if not isinstance(body[name], bool):
            raise bad(name, f"{name} must be true or false")
    for name, (kind, low, high, nullable) in CHECKED_NOT_APPLIED.items():
        value = body.get(name)
        if name in body and not (value is None and nullable) and not number_within(value, low, high, kind == "whole"):
            raise bad(name, f"{name} must be a {'whole ' if kind == 'whole' else ''}number from {low:g} to {high:g}")
    if body.get("task", "transcribe") != "transcribe":
        raise bad("task", "this server transcribes and does not translate; set task to transcribe")
    speakers = body.get("num_speakers", 0)
    if not number_within(speakers, 0, 1, True):
        raise bad("num_speakers", "this server does not do speaker labels; leave num_speakers at 0")
    if body.get("vad_model", "frame") not in VAD_MODELS:
        raise bad("vad_model", f"vad_model must be one of {', '.join(VAD_MODELS)}")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise bad("model", "model must be a model's name, e.g. openai/whisper-large-v3-turbo")
    texts = {name: "" if body.get(name) is None else body[name] for name in ("initial_prompt", "hotwords")}
    for name, value in texts.items():  # null is none; false, 0 or [] is a wrong type, not an empty text
        if not isinstance(value, str):
            raise bad(name, f"{name} must be a text")
    prompt, hotwords = texts["initial_prompt"], texts["hotwords"]
    terms = tuple(term.strip() for term in hotwords.split(",") if term.strip())
    if len(terms) > MAX_TERMS:
        raise bad("hotwords", f"{len(terms)} hotwords, over the limit of {MAX_TERMS}")
    try:
        language = checked_language(core, body.get("language"), "language")
        checked_biasing(core, prompt, terms, "initial_prompt", "initial_prompt and hotwords")
    except ProtocolError as exc:
        raise bad(exc.param or "language", exc.message) from None
    audio = body.get("audio_data")
    if not isinstance(audio, str) or not audio:
        raise bad("audio_data", "audio_data must be the audio file, base64")
    try:
        data = binascii.a2b_base64(audio, strict_mode=True)  # b64decode's checks, without its ASCII copy of the text
    except (binascii.Error, ValueError):
        raise bad("audio_data", "audio_data is not valid base64") from None
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    options = upload_options(core.settings, language, prompt, terms)
    return PredictRequest(data, options, timestamps=not body.get("without_timestamps", True))


def parse_predict_text(text: str, core: Core, max_bytes: int) -> PredictRequest:
    """`parse_predict` of the body's JSON text, which is let go once parsed: with the parsed base64 and
    the file decoded from it, the daemon would hold the file about four times over."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise RequestError("invalid_request", "the body is not JSON") from None
    del text  # the caller passed its only reference (the body's 4/3 of the file)
    return parse_predict(body, core, max_bytes)


def response_body(finals: list[FinalTranscript], seconds: float, request: PredictRequest) -> dict[str, Any]:
    """The transcript: a text per utterance (which the plugin joins as they are, so each after the
    first starts with its space), their spans when timestamps were asked, the language and the audio's length."""
    texts = [final.text.strip() for final in finals]
    language = request.options.language or next((final.language for final in finals if final.language), "")
    return {
        "transcription": [text if index == 0 else f" {text}" for index, text in enumerate(texts)],
        "timestamps": [list(final.span) for final in finals] if request.timestamps else [],
        "info": {"language": language, "duration": round(seconds, 3)},
        "request_id": str(uuid.uuid4()),
    }


class SimplismartRestHandler(UploadApi):
    """aiohttp handler for `POST /predict`; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """The daemon's error, the field at fault named in the sentence."""
        named = error.param and not error.message.startswith(f"{error.param}")
        return error_event(error.code, f"{error.param}: {error.message}" if named else error.message)

    def check_headers(self, request: web.Request) -> None:
        self.uploads.check_ready(REST_PROTOCOL)
        if request.content_length is not None and request.content_length > self.body_limit:
            raise too_large(self.uploads.max_file_bytes)
        check_content_encoding(request)
        if request.content_type != "application/json":
            raise RequestError("invalid_request", "send a JSON body with the audio base64 in audio_data")

    @property
    def body_limit(self) -> int:
        """The largest body: the file base64 (4 bytes per 3) and the options."""
        return self.uploads.max_file_bytes * 4 // 3 + 65536

    async def answer(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        # the body's text goes straight into the parse: neither it nor its bytes outlive their step
        predict = parse_predict_text(await self.read_text(request), self.core, self.uploads.max_file_bytes)
        audio_file = await self.uploads.open_file(predict.audio)
        finals, seconds = await self.uploads.transcribe(request, audio_file, REST_PROTOCOL, predict.options)
        return web.json_response(response_body(finals, seconds, predict))

    async def read_text(self, request: web.Request) -> str:
        """The body as text; its bytes are let go once decoded (both are 4/3 of the file)."""
        pace = UploadPace.from_settings(self.core.settings)
        too_big = functools.partial(too_large, self.uploads.max_file_bytes)
        try:
            raw = await read_limited(
                functools.partial(request.content.read, READ_BYTES), self.body_limit, pace, too_big
            )
        except web.RequestPayloadError as exc:
            raise RequestError("invalid_request", f"the request body cannot be read: {exc}") from None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise RequestError("invalid_request", "the body is not JSON") from None
