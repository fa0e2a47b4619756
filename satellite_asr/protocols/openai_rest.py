"""OpenAI's REST transcription API (docs/openai.md): `POST /v1/audio/transcriptions`, `GET /v1/models`.

Thin by design: it reads and checks the multipart form, decodes the file (`audio_files`), runs it
through a `Recording` (the daemon's VAD cuts it into utterances, decoded at batch priority so live
streams go first) and writes the finals in the response format asked for. Whatever model name the
client sends, the engine's model answers. Mistral's SDK posts its uploads to the same path, with
fields of its own (`MISTRAL_FIELDS`), and gets its answer in Mistral's shape (docs/mistral.md).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDict

from satellite_asr.audio_files import FileRefused
from satellite_asr.biasing.context import MAX_CLIENT_TERMS, client_terms
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.limits import write_within
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, openai_error
from satellite_asr.protocols.uploads import (
    ClientGone,
    Feed,
    FormFields,
    RequestError,
    UploadApi,
    UploadPace,
    Uploads,
    bad_field,
    check_form_headers,
    failure,
    joined_text,
    read_form,
    server_busy,
    upload_options,
)
from satellite_asr.recording import Recording, TranscriptionFailed
from satellite_asr.session import SessionOptions
from satellite_asr.session_manager import ServerBusy

PROTOCOL = "openai-rest"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
MODELS_PATH = "/v1/models"
MODEL_PATH = "/v1/models/{model}"

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
STREAM_FORMATS = ("json", "text")
FIELDS = {
    "file",
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "stream",
    "chunking_strategy",
    "diarize",
}
LIST_FIELDS = {
    "timestamp_granularities[]": 2,
    "keywords[]": MAX_CLIENT_TERMS,
    "timestamp_granularities": 2,
    "context_bias": MAX_CLIENT_TERMS,
}
"""Fields a client may repeat (the openai SDK sends lists as `name[]`, Mistral's as `name` again),
and how often (`FormFields`)."""
MISTRAL_FIELDS = ("diarize", "context_bias", "timestamp_granularities")
"""The fields of Mistral's upload (`audio.transcriptions.complete`, which posts to this path and
always sends `diarize`): a form with one of them and no `response_format` is answered in Mistral's
shape, which its SDK parses (docs/mistral.md)."""


def error_body(exc: ProtocolError, status: int) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": openai_error(exc.code, exc.message, kind=kind, param=exc.param)}


@dataclass(frozen=True)
class TranscriptionRequest:
    """A checked `POST /v1/audio/transcriptions`."""

    file: bytes
    options: SessionOptions
    response_format: str
    """OpenAI's formats, or `mistral` (`MISTRAL_FIELDS`)."""
    stream: bool
    model: str = ""
    segments: bool = True
    """Whether Mistral's answer lists the segments: its client asked for segment timestamps."""


class Form(FormFields):
    """The transcription form's fields: a `chunking_strategy` object is refused as `parse_request`
    would refuse it; a prompt too long to read and too many `keywords[]` as biasing over its limits."""

    def __init__(self, max_context_chars: int) -> None:
        biasing = {"prompt": "prompt", "keywords[]": "prompt", "context_bias": "context_bias"}
        super().__init__(FIELDS, LIST_FIELDS, biasing, max_context_chars)

    def unknown(self, name: str) -> RequestError:
        if name.startswith("chunking_strategy["):  # the SDK's form of an object, {"type": "server_vad"}
            return _only_auto_chunking()
        return super().unknown(name)


def _only_auto_chunking() -> RequestError:
    return bad_field("chunking_strategy", 'chunking_strategy can only be "auto": the daemon\'s VAD cuts the audio')


def parse_request(file: bytes | None, fields: MultiDict[str], core: Core) -> TranscriptionRequest:
    """The form's fields checked against the engine, as session options; `model` is not checked."""
    if file is None:
        raise bad_field("file", "the form has no `file` field with the audio")

    settings = core.settings
    mistral = "response_format" not in fields and any(name in fields for name in MISTRAL_FIELDS)
    response_format = fields.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_field(
            "response_format", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {response_format!r}"
        )
    stream = _boolean("stream", fields.get("stream") or "false")
    if stream and response_format not in STREAM_FORMATS:
        raise bad_field("stream", "stream=true sends transcript.text events; use response_format json or text")
    temperature = fields.get("temperature")
    if temperature is not None:
        try:
            value = float(temperature)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise bad_field("temperature", f"temperature must be a number from 0 to 1, got {temperature!r}")
    granularities = [*fields.getall("timestamp_granularities[]", []), *fields.getall("timestamp_granularities", [])]
    for granularity in granularities:
        if granularity != "segment":
            raise bad_field("timestamp_granularities", f"only segment timestamps are available, not {granularity!r}")
    if _boolean("diarize", fields.get("diarize") or "false"):
        raise bad_field("diarize", "this server does not tell speakers apart; leave diarize out or set it to false")
    if mistral and stream:
        raise bad_field("stream", "Mistral's streamed upload is not served; leave stream out, or use the realtime API")
    chunking = fields.get("chunking_strategy")
    if chunking not in (None, "auto"):
        raise _only_auto_chunking()
    language = checked_language(core, fields.get("language"), "language") or settings.default_language
    prompt = (fields.get("prompt") or "").strip()
    keywords = client_terms(fields.getall("keywords[]", []))
    context_bias = client_terms(fields.getall("context_bias", []))
    if context_bias:
        checked_biasing(core, prompt, [*keywords, *context_bias], "context_bias", "prompt, keywords[] and context_bias")
    else:
        checked_biasing(core, prompt, keywords, "prompt", "prompt and keywords[]")
    options = upload_options(settings, language, prompt, [*keywords, *context_bias])
    if mistral:
        model, segments = fields.get("model") or "", "segment" in granularities
        return TranscriptionRequest(file, options, "mistral", stream, model, segments)
    return TranscriptionRequest(file, options, response_format, stream)


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise bad_field(name, f"{name} must be true or false, got {value!r}")
    return lowered == "true"


# --- response formats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcription:
    segments: list[FinalTranscript]
    """Finals that have words, in order."""
    duration: float
    language: str


def mistral_transcription(result: Transcription, model: str, segments: bool) -> web.Response:
    """Mistral's answer to its upload: the model named, the text, the language, its segments when
    asked for, usage in seconds of audio (no tokens are counted)."""
    return web.json_response(
        {
            "model": model,
            "text": joined_text(result.segments),
            "language": result.language or None,
            "segments": [
                {
                    "type": "transcription_segment",
                    "text": segment.text.strip(),
                    "start": round(segment.start, 3),
                    "end": round(segment.end, 3),
                }
                for segment in (result.segments if segments else [])
            ],
            "usage": {
                "prompt_audio_seconds": round(result.duration),
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
            },
        }
    )


def encode_transcription(result: Transcription, response_format: str) -> web.Response:
    """`text`, `srt` and `vtt` all go out as `text/plain; charset=utf-8`, as OpenAI's servers send
    them: a client written against OpenAI may branch on that media type, and the charset is how
    the SDK decodes the text."""
    if response_format == "text":
        return web.Response(text=joined_text(result.segments) + "\n", content_type="text/plain")
    if response_format == "srt":
        return web.Response(text=_subtitles(result.segments, ","), content_type="text/plain")
    if response_format == "vtt":
        return web.Response(text="WEBVTT\n\n" + _subtitles(result.segments, "."), content_type="text/plain")
    usage = {"type": "duration", "seconds": round(result.duration, 3)}
    if response_format == "json":
        return web.json_response({"text": joined_text(result.segments), "usage": usage})
    return web.json_response(
        {
            "task": "transcribe",
            "language": result.language,
            "duration": round(result.duration, 3),
            "text": joined_text(result.segments),
            "segments": [_segment(index, segment) for index, segment in enumerate(result.segments)],
            "usage": usage,
        }
    )


NOT_REPORTED = 0.0
"""`avg_logprob` and `no_speech_prob` of a segment whose engine did not report them (Qwen3-ASR, a
Whisper decode that wrote its text twice, a failed decode): OpenAI's schema requires numbers, and
0 keeps Whisper's rule for silence (`no_speech_prob` over 0.6 and `avg_logprob` under -1) from
dropping a segment that Silero heard as speech. Not a measurement; docs/openai.md says so."""


def _segment(index: int, segment: FinalTranscript) -> dict[str, Any]:
    """OpenAI's segment with what this daemon measures: no token ids (see docs)."""
    text = segment.text.strip()
    encoded = text.encode()
    avg_logprob, no_speech_prob = segment.avg_logprob, segment.no_speech_prob
    return {
        "id": index,
        "seek": round(segment.start * 100),
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": NOT_REPORTED if avg_logprob is None else avg_logprob,
        "compression_ratio": round(len(encoded) / len(zlib.compress(encoded)), 3),
        "no_speech_prob": NOT_REPORTED if no_speech_prob is None else no_speech_prob,
    }


def _subtitles(segments: list[FinalTranscript], decimal: str) -> str:
    """SRT cues (numbered, `,` before milliseconds) or WebVTT cues (`.`, numbers are optional)."""
    cues: Iterator[str] = (
        f"{index}\n{_timestamp(s.start, decimal)} --> {_timestamp(s.end, decimal)}\n{s.text.strip()}\n"
        for index, s in enumerate(segments, start=1)
    )
    return "\n".join(cues)


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


# --- the handler ---------------------------------------------------------------------------------


class OpenAIRestHandler(UploadApi):
    """aiohttp handlers for the REST routes; `created` of the model is when the daemon started."""

    def __init__(self, core: Core, uploads: Uploads) -> None:
        super().__init__(core, uploads)
        self.started = int(time.time())

    def _model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.started, "owned_by": "satellite-asr"}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model(self.core.engine_info.model)]})

    async def model(self, request: web.Request) -> web.Response:
        """Any id: every model name a client sends is answered by the engine's model."""
        return web.json_response(self._model(request.match_info["model"]))

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """OpenAI's error object (`UploadApi.refuse`)."""
        return error_body(error, status)

    def check_headers(self, request: web.Request) -> None:
        self.uploads.check_ready(PROTOCOL)
        check_form_headers(request, self.uploads.max_file_bytes)

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.check_headers(request)
        settings = self.core.settings
        pace = UploadPace.from_settings(settings)
        form = Form(settings.max_context_chars)
        file, fields = await read_form(request, form, self.uploads.max_file_bytes, pace)
        parsed = parse_request(file, fields, self.core)
        audio_file = await self.uploads.open_file(parsed.file)
        if not parsed.stream:
            segments, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, parsed.options)
            language = next((s.language for s in segments if s.language), parsed.options.language) or ""
            result = Transcription(segments, seconds, language)
            if parsed.response_format == "mistral":
                model = parsed.model or self.core.engine_info.model
                return mistral_transcription(result, model, parsed.segments)
            return encode_transcription(result, parsed.response_format)
        try:
            async with Recording(self.core, PROTOCOL, parsed.options) as recording:
                return await self._stream(request, recording, Feed(audio_file, request, self.uploads.decoding))
        except ServerBusy as exc:
            raise server_busy(exc) from None
        finally:
            audio_file.close()

    async def _stream(self, request: web.Request, recording: Recording, feed: Feed) -> web.StreamResponse:
        """`transcript.text.delta` per segment as it is decoded, then `transcript.text.done`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        texts: list[str] = []

        async def send(event: dict[str, Any]) -> None:
            """Raises `SlowClient` (a `ConnectionError`) and drops the client when it does not read."""
            await write_within(response.write(_sse(event)), self.core.settings.write_timeout_s, request.transport)

        try:
            async for final in recording.finals(feed.chunks()):
                text = final.text.strip()
                if text:
                    await send({"type": "transcript.text.delta", "delta": (" " if texts else "") + text})
                    texts.append(text)
            await send({"type": "transcript.text.done", "text": " ".join(texts)})
        except (FileRefused, TranscriptionFailed) as exc:
            error = failure(exc)
            self.core.metrics.errors.labels(error.code).inc()
            with suppress(ConnectionError):
                await send(error_body(error, error.status))
        except (ClientGone, ConnectionError):
            return response
        with suppress(ConnectionError):
            await write_within(response.write_eof(), self.core.settings.write_timeout_s, request.transport)
        return response
