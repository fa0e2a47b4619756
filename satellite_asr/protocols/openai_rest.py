"""OpenAI's REST transcription API (docs/openai.md): `POST /v1/audio/transcriptions`, `GET /v1/models`.

Thin by design: it reads and checks the multipart form, decodes the file (`audio_files`), runs it
through a `Recording` (the daemon's VAD cuts it into utterances, decoded at batch priority so live
streams go first) and writes the finals in the response format asked for. Whatever model name the
client sends, the engine's model answers.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.audio_files import AudioFile, AudioTooLongError, FileRefused, decoded_chunks
from satellite_asr.biasing.context import MAX_CLIENT_TERMS, client_terms
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.limits import ConnectionLimit, TooManyConnections, write_within
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, client_gone, openai_error
from satellite_asr.recording import Recording, TranscriptionFailed
from satellite_asr.session import SessionOptions
from satellite_asr.session_manager import ServerBusy

PROTOCOL = "openai-rest"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
MODELS_PATH = "/v1/models"
MODEL_PATH = "/v1/models/{model}"

_T = TypeVar("_T")

KB = 1 << 10
MB = 1 << 20
FIELD_BYTES = 64 * 1024
"""Largest text field (a prompt of this size is far beyond what any engine reads)."""
FORM_OVERHEAD_BYTES = MB
"""Most the text fields together may hold, and what they and the multipart framing may add to the
file's size in a request's Content-Length."""
READ_BYTES = 64 * 1024

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
STREAM_FORMATS = ("json", "text")
FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "stream", "chunking_strategy"}
LIST_FIELDS = {"timestamp_granularities[]": 2, "keywords[]": MAX_CLIENT_TERMS}
"""Fields a client may repeat (the openai SDK sends lists as `name[]`), and how often. Every part
costs the form reader about 0.3 ms of the event loop whatever its size: uncapped, a form of 20000
empty `keywords[]` parts (1.3 MB) was still being read when the upload's pace cut it with a 408."""


class RequestError(ProtocolError):
    """A `ProtocolError` with what REST adds: the HTTP status, and headers of the answer."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, fatal=True, param=param)
        self.status = status
        self.headers = headers


def error_body(exc: ProtocolError, status: int) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": openai_error(exc.code, exc.message, kind=kind, param=exc.param)}


def _bad_field(param: str, message: str) -> RequestError:
    return RequestError("invalid_value", message, param=param)


@dataclass(frozen=True)
class TranscriptionRequest:
    """A checked `POST /v1/audio/transcriptions`."""

    file: bytes
    options: SessionOptions
    response_format: str
    stream: bool


class UploadPace:
    """How long an upload's body may take: no read may wait more than `stall_s`, and the body may
    take `stall_s` plus a second for each `min_bytes_per_s` bytes received.

    A minimum rate, not one deadline for the whole body: a deadline long enough for the largest
    file on a slow link would let a trickle of bytes hold an upload slot that long, and one short
    enough to free the slot would cut large files. At a minimum rate a trickle loses its slot after
    about `stall_s`, and a file of any size gets the time its size needs.
    """

    def __init__(self, stall_s: float, min_bytes_per_s: int) -> None:
        self.stall_s = stall_s
        self.min_bytes_per_s = min_bytes_per_s
        self.started = time.monotonic()
        self.received = 0
        """Bytes of the form's parts read so far (what earns the body more time)."""

    async def read_chunk(self, part: BodyPartReader) -> bytes:
        chunk = await self.within(part.read_chunk(READ_BYTES))
        self.received += len(chunk)
        return chunk

    async def within(self, read: Awaitable[_T]) -> _T:
        """One read of the body, or 408 `body_timeout` when it stalls or the body falls behind the rate."""
        elapsed = time.monotonic() - self.started
        left = self.stall_s + self.received / self.min_bytes_per_s - elapsed
        try:
            return await asyncio.wait_for(read, min(self.stall_s, left))
        except TimeoutError:
            # One message for both: a body that has sent nothing is stalled and behind the rate at once.
            message = (
                f"the upload sent nothing for {self.stall_s:g} s (header_timeout_s) or came slower than "
                f"{self.min_bytes_per_s // KB} KB/s (min_upload_kb_per_s): {self.received} bytes in "
                f"{time.monotonic() - self.started:.0f} s; send the whole request at once"
            )
            raise RequestError("body_timeout", message, status=408) from None


async def read_form(
    request: web.Request, max_file_bytes: int, max_context_chars: int, pace: UploadPace
) -> tuple[bytes | None, dict[str, list[str]]]:
    """The uploaded file and the text fields, sizes checked while reading (Content-Length and the
    media type were checked by `check_form_headers`); a body slower than `pace` allows is refused (408)."""
    try:
        reader = await request.multipart()
        file: bytes | None = None
        fields: dict[str, list[str]] = {}
        text_bytes = 0
        while (part := await pace.within(reader.next())) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise RequestError("invalid_request", "every form part must be a named field")
            name = part.name
            if name.startswith("chunking_strategy["):  # the SDK's form of an object, {"type": "server_vad"}
                raise _only_auto_chunking()
            if name not in FIELDS and name not in LIST_FIELDS:
                raise _bad_field(
                    name, f"unknown field {name!r}; this server reads {', '.join(sorted([*FIELDS, *LIST_FIELDS]))}"
                )
            if name not in LIST_FIELDS and (name in fields or (name == "file" and file is not None)):
                raise _bad_field(name, f"field {name!r} is given more than once")
            if name in LIST_FIELDS and len(fields.get(name, [])) == LIST_FIELDS[name]:
                raise _repeated_too_often(name)
            if name == "file":
                too_large = functools.partial(_too_large, max_file_bytes)
                file = await _read_part(part, max_file_bytes, pace, too_large)
                if part.filename is None and _looks_like_a_path(file):
                    shown = file.decode().strip()[:100]
                    raise RequestError(
                        "invalid_file",
                        f"the file field holds the text {shown!r}, not a file's content: send the file itself "
                        "(with curl, -F file=@PATH: the @ reads the file)",
                        param="file",
                    )
            else:
                limit = min(FIELD_BYTES, FORM_OVERHEAD_BYTES - text_bytes)
                too_long = functools.partial(_field_too_long, name, limit, max_context_chars)
                raw = await _read_part(part, limit, pace, too_long)
                text_bytes += len(raw)
                try:
                    fields.setdefault(name, []).append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise _bad_field(name, f"{name} must be UTF-8 text") from None
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's multipart parser: malformed framing or part headers
        raise RequestError("invalid_request", f"the multipart form cannot be read: {_client_fault(exc)}") from None
    except web.RequestPayloadError as exc:  # a body its Content-Encoding cannot decode
        raise RequestError("invalid_request", f"the request body cannot be read: {_client_fault(exc)}") from None
    return file, fields


def check_form_headers(request: web.Request, max_file_bytes: int) -> None:
    """What the headers alone tell of the form: its declared size (413), its encoding (415) and its
    media type (400)."""
    if request.content_length is not None and request.content_length > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise _too_large(max_file_bytes)
    check_content_encoding(request)
    if request.content_type != "multipart/form-data":
        raise RequestError("invalid_request", "send the audio as multipart/form-data with a `file` field")


BODY_ENCODINGS = ("gzip", "deflate")
"""The `Content-Encoding`s of a body that aiohttp decodes with the standard library (`identity` is
none). It hands any other on as it came (xz, or a list of codings: `gzip, deflate`), which the form
reader then refused for its framing, or read as a form if it was one; br and zstd it refuses itself,
before the daemon sees the request, unless Brotli or zstandard is installed (neither is a dependency)."""


def check_content_encoding(request: web.Request) -> None:
    """415 `unsupported_encoding`, with `Accept-Encoding` (RFC 7694), for a body in an encoding
    aiohttp does not decode: one header, one of `BODY_ENCODINGS` or `identity`, as aiohttp reads it
    (an empty one it reads as none)."""
    encodings = [value for value in request.headers.getall(hdrs.CONTENT_ENCODING, []) if value.strip()]
    if not encodings:
        return
    encoding = ", ".join(encodings)
    if len(encodings) == 1 and encoding.isascii() and encoding.lower() in (*BODY_ENCODINGS, "identity"):
        return
    message = (
        f"the request body's Content-Encoding {encoding!r} is not one this server decodes: "
        f"send the form uncompressed, or compressed with {' or '.join(BODY_ENCODINGS)}"
    )
    raise RequestError(
        "unsupported_encoding", message, status=415, headers={"Accept-Encoding": ", ".join(BODY_ENCODINGS)}
    )


def _looks_like_a_path(data: bytes) -> bool:
    """A short line of text where the audio should be, sent as a plain field (no filename): curl's
    `-F file=PATH` without the `@`. No audio container is a few printable characters."""
    if not 0 < len(data) <= 4096 or b"\0" in data:
        return False
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False
    return bool(text) and "\n" not in text and text.isprintable()


def _client_fault(exc: Exception) -> str:
    """What aiohttp found wrong, in one short line: its HTTP errors print as "400, message:" and
    then the text, and a body error carries the decoding error as its cause."""
    fault = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
    text = fault.message if isinstance(fault, HttpProcessingError) else str(fault)
    first_line = text.strip().splitlines()[0] if text.strip() else type(fault).__name__
    return first_line[:200]


async def _read_part(
    part: BodyPartReader, limit: int, pace: UploadPace, too_large: Callable[[], RequestError]
) -> bytes:
    """The part's bytes, held once: `BytesIO.getvalue()` hands over the buffer it wrote them into
    where `bytes(bytearray)` copied it (a 25 MB file peaked at 50 MB)."""
    data = io.BytesIO()
    while chunk := await pace.read_chunk(part):
        data.write(chunk)
        if data.tell() > limit:
            raise too_large()
    return data.getvalue()


def _field_too_long(name: str, limit: int, max_context_chars: int) -> RequestError:
    """A prompt too long to read is refused as one over `max_context_chars` is (`checked_biasing`)."""
    if name == "prompt":
        message = (
            f"the prompt is over the {limit} bytes this server reads of it; "
            f"its limit is {max_context_chars} characters (max_context_chars)"
        )
        return RequestError("context_too_long", message, param=name)
    return _bad_field(name, f"{name} is too long")


def _repeated_too_often(name: str) -> RequestError:
    """More `keywords[]` than a client may give is refused as `checked_biasing` refuses them."""
    limit = LIST_FIELDS[name]
    if name == "keywords[]":
        message = f"{limit + 1} names and terms or more (keywords[]), over the limit of {limit}"
        return RequestError("context_too_long", message, param="prompt")
    return _bad_field(name.removesuffix("[]"), f"{name} is given more than {limit} times")


def _only_auto_chunking() -> RequestError:
    return _bad_field("chunking_strategy", 'chunking_strategy can only be "auto": the daemon\'s VAD cuts the audio')


def _too_large(max_file_bytes: int) -> RequestError:
    return RequestError(
        "file_too_large",
        f"the file is over this server's limit of {max_file_bytes // MB} MB (setting max_upload_mb)",
        status=413,
        param="file",
    )


def parse_request(file: bytes | None, fields: dict[str, list[str]], core: Core) -> TranscriptionRequest:
    """The form's fields checked against the engine, as session options; `model` is not checked."""
    if file is None:
        raise _bad_field("file", "the form has no `file` field with the audio")

    def single(name: str) -> str | None:
        values = fields.get(name)
        return values[0] if values else None

    settings = core.settings
    response_format = single("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise _bad_field(
            "response_format", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {response_format!r}"
        )
    stream = _boolean("stream", single("stream") or "false")
    if stream and response_format not in STREAM_FORMATS:
        raise _bad_field("stream", "stream=true sends transcript.text events; use response_format json or text")
    temperature = single("temperature")
    if temperature is not None:
        try:
            value = float(temperature)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise _bad_field("temperature", f"temperature must be a number from 0 to 1, got {temperature!r}")
    for granularity in fields.get("timestamp_granularities[]", []):
        if granularity != "segment":
            raise _bad_field("timestamp_granularities", f"only segment timestamps are available, not {granularity!r}")
    chunking = single("chunking_strategy")
    if chunking not in (None, "auto"):
        raise _only_auto_chunking()
    language = checked_language(core, single("language"), "language") or settings.default_language
    prompt = (single("prompt") or "").strip()
    keywords = client_terms(fields.get("keywords[]", []))
    checked_biasing(core, prompt, keywords, "prompt", "prompt and keywords[]")
    # A file: every pause waits `silence_ms` (no turn detector, whose speculative decodes at each
    # pause serve a person waiting for an answer, not an upload).
    options = SessionOptions.from_settings(
        settings,
        vad={"turn_detection": "fixed"},
        partials=False,
        language=language,
        context=prompt,
        terms=keywords,
        batch=True,
    )
    return TranscriptionRequest(file, options, response_format, stream)


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise _bad_field(name, f"{name} must be true or false, got {value!r}")
    return lowered == "true"


# --- response formats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcription:
    segments: list[FinalTranscript]
    """Finals that have words, in order."""
    duration: float
    language: str


def joined_text(segments: list[FinalTranscript]) -> str:
    return " ".join(segment.text.strip() for segment in segments)


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


class _ClientGone(Exception):
    """The client closed the connection; the rest of the file is not worth decoding."""


class _Feed:
    """The decoded file as the recording reads it: counts the audio, stops when the client leaves."""

    def __init__(self, audio_file: AudioFile, request: web.Request, executor: Executor) -> None:
        self.audio_file = audio_file
        self.executor = executor
        self.request = request
        self.samples = 0

    async def chunks(self) -> AsyncIterator[Audio]:
        async for chunk in decoded_chunks(self.audio_file, self.executor):
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise _ClientGone
            self.samples += chunk.size
            yield chunk

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


class OpenAIRestHandler:
    """aiohttp handlers for the REST routes; `created` of the model is when the daemon started."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.started = int(time.time())
        settings = core.settings
        self.uploads = ConnectionLimit(
            PROTOCOL,
            settings.max_uploads,
            settings.max_uploads_per_address,
            total_setting="max_uploads",
            per_address_setting="max_uploads_per_address",
        )
        self.decoding = ThreadPoolExecutor(settings.max_uploads, thread_name_prefix="upload-decode")
        """Uploads decode in threads of their own, one per upload allowed: on asyncio's default
        executor they could take every thread that live sessions' short tasks (name correction,
        pitch) need."""

    async def close(self) -> None:
        """Wait for the decode threads (a chunk each at most) and end them; after the handlers ended."""
        await asyncio.to_thread(self.decoding.shutdown)

    def _model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.started, "owned_by": "satellite-asr"}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model(self.core.engine_info.model)]})

    async def model(self, request: web.Request) -> web.Response:
        """Any id: every model name a client sends is answered by the engine's model."""
        return web.json_response(self._model(request.match_info["model"]))

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        try:
            with self.uploads.opened(request.remote or ""):
                return await self._transcribe(request)
        except (TooManyConnections, ProtocolError) as exc:
            return self._refuse(exc)
        except (_ClientGone, ConnectionError):  # the client left, mid-body or mid-transcription
            return client_gone()

    def refused_before_body(self, request: web.Request) -> web.Response | None:
        """The refusal `transcriptions` would answer from the request's headers alone, else None: what
        an `Expect: 100-continue` request is told before it sends its file."""
        try:
            self.uploads.check(request.remote or "")
            self._check_headers(request)
        except (TooManyConnections, ProtocolError) as exc:
            return self._refuse(exc)
        return None

    def _refuse(self, exc: TooManyConnections | ProtocolError) -> web.Response:
        """The error as OpenAI's error object, and the connection closed after it: a body left unread
        (too large, stalled) or cut short of its form (a Content-Length shorter than the body) would
        otherwise be parsed by aiohttp as a next request, answered with a plain-text 400 that quotes
        it back. An upload that is answered keeps its connection (an SDK's next upload reuses it)."""
        if isinstance(exc, TooManyConnections):
            exc = RequestError("too_many_connections", str(exc), status=503, headers={"Retry-After": "5"})
        self.core.metrics.errors.labels(exc.code).inc()
        status, headers = (exc.status, exc.headers) if isinstance(exc, RequestError) else (400, None)
        response = web.json_response(error_body(exc, status), status=status, headers=headers)
        response.force_close()
        return response

    def _check_headers(self, request: web.Request) -> None:
        """Everything that can refuse the upload before its body is read: a client is not made to
        send its file to be told the server is busy or the file too large."""
        self._check_ready()
        try:
            self.core.sessions.check_room(PROTOCOL)
        except ServerBusy as exc:
            raise RequestError("server_busy", str(exc), status=503) from None
        check_form_headers(request, self.core.settings.max_upload_mb * MB)

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        self._check_headers(request)
        settings = self.core.settings
        pace = UploadPace(settings.header_timeout_s, settings.min_upload_kb_per_s * KB)
        file, fields = await read_form(request, settings.max_upload_mb * MB, settings.max_context_chars, pace)
        parsed = parse_request(file, fields, self.core)
        try:
            audio_file = await asyncio.get_running_loop().run_in_executor(
                self.decoding, AudioFile.open, parsed.file, settings.max_upload_audio_s
            )
        except FileRefused as exc:
            raise _failure(exc) from None
        feed = _Feed(audio_file, request, self.decoding)
        try:
            async with Recording(self.core, PROTOCOL, parsed.options) as recording:
                if parsed.stream:
                    return await self._stream(request, recording, feed)
                try:
                    segments = [f async for f in recording.finals(feed.chunks()) if f.text.strip()]
                except (FileRefused, TranscriptionFailed) as exc:
                    raise _failure(exc) from None
        except ServerBusy as exc:
            raise RequestError("server_busy", str(exc), status=503) from None
        finally:
            audio_file.close()
        language = next((s.language for s in segments if s.language), parsed.options.language) or ""
        return encode_transcription(Transcription(segments, feed.seconds, language), parsed.response_format)

    def _check_ready(self) -> None:
        status = self.core.status
        if status == "failed":
            message = f"the speech engine failed to load: {self.core.engine_error}"
            raise RequestError("engine_failed", message, status=503)
        if status == "loading":
            raise RequestError("model_not_ready", "the speech engine is still loading; try again shortly", status=503)
        if status == "broken":  # degraded (a decode failed, a probe runs) is still served
            repair = "being restarted" if self.core.engine.restartable else "probed until its servers answer"
            message = f"the speech engine is failing and {repair}; try again shortly"
            raise RequestError("engine_unavailable", message, status=503)

    async def _stream(self, request: web.Request, recording: Recording, feed: _Feed) -> web.StreamResponse:
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
            error = _failure(exc)
            self.core.metrics.errors.labels(error.code).inc()
            with suppress(ConnectionError):
                await send(error_body(error, error.status))
        except (_ClientGone, ConnectionError):
            return response
        with suppress(ConnectionError):
            await write_within(response.write_eof(), self.core.settings.write_timeout_s, request.transport)
        return response


def _failure(exc: FileRefused | TranscriptionFailed) -> RequestError:
    """A file that stops decoding midway or is too long is the client's (400); a failed decode or
    shutdown is ours."""
    if isinstance(exc, AudioTooLongError):
        return RequestError("audio_too_long", f"{exc} (setting max_upload_audio_s); send it in parts", param="file")
    if isinstance(exc, FileRefused):
        return RequestError("invalid_file", f"the file is not audio this server can decode: {exc}", param="file")
    status = 500 if exc.code == "engine_error" else 503
    return RequestError(exc.code, exc.message, status=status)
