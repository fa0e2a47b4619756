"""What the APIs that take a whole file share (OpenAI's `POST /v1/audio/transcriptions`, Deepgram's
`POST /v1/listen`, ElevenLabs' `POST /v1/speech-to-text`, Cartesia's `POST /stt`): one cap on
uploads, their decode threads, the pace a body must keep, the checks made before a body is read,
the reading of a multipart form, and the file decoded and run through a `Recording`. Each API checks
its own fields and writes its own answer and error body.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict

from satellite_asr.audio import SAMPLE_RATE, Audio, AudioFormatError, PcmDecoder
from satellite_asr.audio_files import AudioFile, AudioTooLongError, FileRefused, decoded_chunks
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.limits import ConnectionLimit, TooManyConnections
from satellite_asr.protocols import ProtocolError, client_gone
from satellite_asr.recording import Recording, TranscriptionFailed
from satellite_asr.session import SessionOptions
from satellite_asr.session_manager import ServerBusy

_T = TypeVar("_T")

KB = 1 << 10
MB = 1 << 20
READ_BYTES = 64 * 1024


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
        """Bytes of the body read so far (what earns the body more time)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPace:
        return cls(settings.header_timeout_s, settings.min_upload_kb_per_s * KB)

    async def read_chunk(self, read: Awaitable[bytes]) -> bytes:
        chunk = await self.within(read)
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


async def read_limited(
    read: Callable[[], Awaitable[bytes]], limit: int, pace: UploadPace, too_large: Callable[[], RequestError]
) -> bytes:
    """What `read` gives until it gives nothing, held once: `BytesIO.getvalue()` hands over the
    buffer it wrote them into where `bytes(bytearray)` copied it (a 25 MB file peaked at 50 MB)."""
    data = io.BytesIO()
    while chunk := await pace.read_chunk(read()):
        data.write(chunk)
        if data.tell() > limit:
            raise too_large()
    return data.getvalue()


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
        f"send the body uncompressed, or compressed with {' or '.join(BODY_ENCODINGS)}"
    )
    raise RequestError(
        "unsupported_encoding", message, status=415, headers={"Accept-Encoding": ", ".join(BODY_ENCODINGS)}
    )


def client_fault(exc: Exception) -> str:
    """What aiohttp found wrong, in one short line: its HTTP errors print as "400, message:" and
    then the text, and a body error carries the decoding error as its cause."""
    fault = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
    text = fault.message if isinstance(fault, HttpProcessingError) else str(fault)
    first_line = text.strip().splitlines()[0] if text.strip() else type(fault).__name__
    return first_line[:200]


def too_large(max_file_bytes: int) -> RequestError:
    return RequestError(
        "file_too_large",
        f"the file is over this server's limit of {max_file_bytes // MB} MB (setting max_upload_mb)",
        status=413,
        param="file",
    )


FIELD_BYTES = 64 * 1024
"""Largest text field of a form (a prompt of this size is far beyond what any engine reads)."""
FORM_OVERHEAD_BYTES = MB
"""Most a form's text fields together may hold, and what they and the multipart framing may add to
the file's size in a request's Content-Length."""


def bad_field(param: str, message: str) -> RequestError:
    return RequestError("invalid_value", message, param=param)


class FormFields:
    """The fields of one API's multipart form: which it reads, which a client may repeat (and how
    often), and how it refuses a field. Every part costs the form reader about 0.3 ms of the event
    loop whatever its size: uncapped, a form of 20000 empty repeated parts (1.3 MB) was still being
    read when the upload's pace cut it with a 408."""

    def __init__(
        self,
        single: Collection[str],
        repeatable: Mapping[str, int],
        biasing: Mapping[str, str] | None = None,
        max_context_chars: int = 0,
    ) -> None:
        self.single = single
        self.repeatable = repeatable
        self.biasing = biasing or {}
        """Fields that bias the engine, by the parameter their refusals name: one too long to read,
        or repeated past its limit, is refused as `checked_biasing` refuses biasing over its limits
        (`context_too_long`)."""
        self.max_context_chars = max_context_chars

    def check_name(self, name: str, fields: MultiDict[str], has_file: bool) -> None:
        """A part refused by its name alone, before its content is read."""
        if name not in self.single and name not in self.repeatable:
            raise self.unknown(name)
        if name not in self.repeatable and (name in fields or (name == "file" and has_file)):
            raise bad_field(name, f"field {name!r} is given more than once")
        if name in self.repeatable and len(fields.getall(name, [])) == self.repeatable[name]:
            raise self.repeated_too_often(name)

    def unknown(self, name: str) -> RequestError:
        known = ", ".join(sorted([*self.single, *self.repeatable]))
        return bad_field(name, f"unknown field {name!r}; this server reads {known}")

    def repeated_too_often(self, name: str) -> RequestError:
        limit = self.repeatable[name]
        if name in self.biasing:
            message = f"{limit + 1} names and terms or more ({name}), over the limit of {limit}"
            return RequestError("context_too_long", message, param=self.biasing[name])
        return bad_field(name.removesuffix("[]"), f"{name} is given more than {limit} times")

    def too_long(self, name: str, limit: int) -> RequestError:
        if name in self.biasing:
            message = (
                f"{name} is over the {limit} bytes this server reads of it; "
                f"the limit is {self.max_context_chars} characters (max_context_chars)"
            )
            return RequestError("context_too_long", message, param=self.biasing[name])
        return bad_field(name, f"{name} is too long")


def check_form_headers(request: web.Request, max_file_bytes: int) -> None:
    """What the headers alone tell of a form: its declared size (413), its encoding (415) and its
    media type (400)."""
    if request.content_length is not None and request.content_length > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_file_bytes)
    check_content_encoding(request)
    if request.content_type != "multipart/form-data":
        raise RequestError("invalid_request", "send the audio as multipart/form-data with a `file` field")


async def read_form(
    request: web.Request, form: FormFields, max_file_bytes: int, pace: UploadPace
) -> tuple[bytes | None, MultiDict[str]]:
    """The uploaded file and the text fields, names and sizes checked while reading (Content-Length
    and the media type were checked by `check_form_headers`); a body slower than `pace` allows is
    refused (408)."""
    try:
        reader = await request.multipart()
        file: bytes | None = None
        fields: MultiDict[str] = MultiDict()
        text_bytes = 0
        while (part := await pace.within(reader.next())) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise RequestError("invalid_request", "every form part must be a named field")
            name = part.name
            form.check_name(name, fields, file is not None)
            if name == "file":
                too_big = functools.partial(too_large, max_file_bytes)
                file = await read_limited(functools.partial(part.read_chunk, READ_BYTES), max_file_bytes, pace, too_big)
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
                too_long = functools.partial(form.too_long, name, limit)
                raw = await read_limited(functools.partial(part.read_chunk, READ_BYTES), limit, pace, too_long)
                text_bytes += len(raw)
                try:
                    fields.add(name, raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise bad_field(name, f"{name} must be UTF-8 text") from None
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's multipart parser: malformed framing or part headers
        raise RequestError("invalid_request", f"the multipart form cannot be read: {client_fault(exc)}") from None
    except web.RequestPayloadError as exc:  # a body its Content-Encoding cannot decode
        raise RequestError("invalid_request", f"the request body cannot be read: {client_fault(exc)}") from None
    return file, fields


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


def joined_text(finals: Sequence[FinalTranscript]) -> str:
    """A file's transcript as one text: its utterances' finals joined by spaces (every upload API's)."""
    return " ".join(final.text.strip() for final in finals)


def upload_options(settings: Settings, language: str | None, context: str, terms: Sequence[str]) -> SessionOptions:
    """A file's session: every pause waits `silence_ms` (no turn detector, whose speculative decodes
    at each pause serve a person waiting for an answer, not an upload), no partials, batch priority
    so that live streams go first. `language` None: the engine detects it."""
    return SessionOptions.from_settings(
        settings,
        vad={"turn_detection": "fixed"},
        partials=False,
        language=language,
        context=context,
        terms=terms,
        batch=True,
    )


def failure(exc: FileRefused | TranscriptionFailed) -> RequestError:
    """A file that stops decoding midway or is too long is the client's (400); a failed decode or
    shutdown is ours."""
    if isinstance(exc, AudioTooLongError):
        return RequestError("audio_too_long", f"{exc} (setting max_upload_audio_s); send it in parts", param="file")
    if isinstance(exc, FileRefused):
        return RequestError("invalid_file", f"the file is not audio this server can decode: {exc}", param="file")
    status = 500 if exc.code == "engine_error" else 503
    return RequestError(exc.code, exc.message, status=status)


def server_busy(exc: ServerBusy) -> RequestError:
    return RequestError("server_busy", str(exc), status=503)


class ClientGone(Exception):
    """The client closed the connection; the rest of the file is not worth decoding."""


class Feed:
    """The decoded file as the recording reads it: counts the audio, stops when the client leaves."""

    def __init__(self, audio_file: AudioFile, request: web.Request, executor: ThreadPoolExecutor) -> None:
        self.audio_file = audio_file
        self.executor = executor
        self.request = request
        self.samples = 0

    async def chunks(self) -> AsyncIterator[Audio]:
        async for chunk in decoded_chunks(self.audio_file, self.executor):
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise ClientGone
            self.samples += chunk.size
            yield chunk

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


class Uploads:
    """The daemon's uploads, whichever API they come by: `max_uploads` at once (and
    `max_uploads_per_address`), decoded in threads of their own."""

    def __init__(self, core: Core) -> None:
        self.core = core
        settings = core.settings
        self.connections = ConnectionLimit(
            "upload",
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

    @property
    def max_file_bytes(self) -> int:
        return self.core.settings.max_upload_mb * MB

    def check_ready(self, protocol: str) -> None:
        """What refuses any upload before its body is read, besides its slot (a client is not made to
        send its file to be told the server is busy): the engine, and room for a session."""
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
        try:
            self.core.sessions.check_room(protocol)
        except ServerBusy as exc:
            raise server_busy(exc) from None

    async def open_file(self, data: bytes, *, pcm: tuple[str, int] | None = None) -> AudioFile:
        """The file opened for decoding (its first chunk decoded), or 400 when it is not audio or too
        long; `pcm`: headerless mono PCM of that encoding and rate (`AudioFile.open_pcm`), whole samples
        of it (FFmpeg would drop a part sample unsaid)."""
        limit = self.core.settings.max_upload_audio_s
        if pcm is not None:
            try:
                PcmDecoder(*pcm).check_whole_frames(data)
            except AudioFormatError as exc:
                message = f"the file is not headerless PCM of its encoding: {exc}"
                raise RequestError("invalid_file", message, param="file") from None
        opening = (
            functools.partial(AudioFile.open_pcm, data, limit, *pcm)
            if pcm
            else functools.partial(AudioFile.open, data, limit)
        )
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decoding, opening)
        except FileRefused as exc:
            raise failure(exc) from None

    async def transcribe(
        self, request: web.Request, audio_file: AudioFile, protocol: str, options: SessionOptions
    ) -> tuple[list[FinalTranscript], float]:
        """The file's finals that have words, in order, and the seconds of its audio; the file is closed after."""
        feed = Feed(audio_file, request, self.decoding)
        try:
            async with Recording(self.core, protocol, options) as recording:
                finals = [final async for final in recording.finals(feed.chunks()) if final.text.strip()]
        except (FileRefused, TranscriptionFailed) as exc:
            raise failure(exc) from None
        except ServerBusy as exc:
            raise server_busy(exc) from None
        finally:
            audio_file.close()
        return finals, feed.seconds


class UploadApi(abc.ABC):
    """One API that takes a whole file per request, under the cap all of them share (`Uploads`):
    what it reads, checks and answers, and its error body, are its own."""

    def __init__(self, core: Core, uploads: Uploads) -> None:
        self.core = core
        self.uploads = uploads

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """The route's handler: the upload answered within the cap, or refused in the API's body."""
        try:
            with self.uploads.connections.opened(request.remote or ""):
                return await self.answer(request)
        except (TooManyConnections, ProtocolError) as exc:
            return self.refuse(exc)
        except (ClientGone, ConnectionError):  # the client left, mid-body or mid-transcription
            return client_gone()

    def refused_before_body(self, request: web.Request) -> web.Response | None:
        """The refusal `upload` would answer from the request's headers alone, else None: what an
        `Expect: 100-continue` request is told before it sends its file."""
        try:
            self.uploads.connections.check(request.remote or "")
            self.check_headers(request)
        except (TooManyConnections, ProtocolError) as exc:
            return self.refuse(exc)
        return None

    def refuse(self, exc: TooManyConnections | ProtocolError) -> web.Response:
        """The error in the API's own body (`error_body`), counted, and the connection closed after
        it: a body left unread (too large, stalled) or cut short (a Content-Length shorter than the
        body) would otherwise be parsed by aiohttp as a next request, answered with a plain-text 400
        that quotes it back. An upload that is answered keeps its connection (an SDK's next upload
        reuses it). A `ProtocolError` that is not a `RequestError` is a 400 as it is: made into one,
        its message (cut to `MESSAGE_CHARS` already) would be cut again, and say the length of the
        first cut instead of the text's."""
        if isinstance(exc, TooManyConnections):
            exc = RequestError("too_many_connections", str(exc), status=503, headers={"Retry-After": "5"})
        status, headers = (exc.status, exc.headers) if isinstance(exc, RequestError) else (400, None)
        self.core.metrics.errors.labels(exc.code).inc()
        response = web.json_response(self.error_body(exc, status), status=status, headers=headers)
        response.force_close()
        return response

    @abc.abstractmethod
    def error_body(self, error: ProtocolError, status: int) -> Any:
        """The API's own error body."""

    @abc.abstractmethod
    def check_headers(self, request: web.Request) -> object:
        """Everything that can refuse the upload before its body is read."""

    @abc.abstractmethod
    async def answer(self, request: web.Request) -> web.StreamResponse:
        """Reads the upload, transcribes it and writes the API's answer."""
