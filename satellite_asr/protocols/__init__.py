"""Protocol adapters: each turns one wire protocol into calls on a `Session` and back.

The contract every adapter follows (so that a new protocol is one thin file and one route):

1. It is handed the `Core` and reaches the engine, settings, metrics and sessions through it; it
   owns no VAD, model or timers of its own.
2. It creates a session (`open_session`) when the client needs one (at connect on `/v1/realtime`, at
   a config or the first audio on `/v1/stream`, per round on Wyoming), with
   `SessionOptions.from_settings` and the client's overrides, checked against the engine.
3. It decodes the client's audio to 16 kHz mono float32 with a `PcmInput` (wire PCM) and feeds it.
   (An upload is a whole file, not a stream: the REST adapter hands it to a `Recording`, which
   creates, feeds and releases its session.)
4. It turns the session's events (`events.py`) into wire messages; nothing else produces them.
5. When the stream ends it drains the decoder and releases the session in a `finally`:
   `finalize=True` when the client asked for an end (its finals are sent), `False` when it left.
6. Every input it refuses raises the one `ProtocolError` (a code and a human sentence, and the
   offending field as `param` where the protocol names it); the adapter answers it in the
   protocol's own error shape and ends the connection only when `fatal`.
7. A client's language and biasing go through `checked_language` and `checked_context` (with names
   or terms, `checked_biasing` or `biasing_problems`), so every protocol accepts and refuses the
   same values (what it does with a refusal is its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import select
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import WS_CLOSED_MESSAGE

from satellite_asr.audio import AudioFormatError, PcmDecoder
from satellite_asr.biasing.context import MAX_CLIENT_TERMS, biasing_context
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.limits import kept_counted, last_received, write_within
from satellite_asr.session import Emit, Session, SessionOptions
from satellite_asr.session_manager import CloseConnection, ServerBusy

log = logging.getLogger(__name__)

MESSAGE_CHARS = 1000
"""Most characters of an error's message and of its `param`: every sentence of the daemon's own
fits; what made one longer was a client's value quoted in it (a 500 KB `rate` in a Wyoming
audio-chunk, a 60 KB REST `language`, a Realtime event type as long as the event), which nobody
reads and which cost its size again to send and log."""


CUT = re.compile(r"… \(cut: [0-9]{1,19} characters\)\Z")
"""What `_clipped` ends a cut text with: its length, in at most 19 digits, so that a client's text
that ends like it (quoted at a message's end) and is taken for a cut adds a few characters to
`MESSAGE_CHARS`, not its own length."""


def _clipped(text: str) -> str:
    """`text`, or its first `MESSAGE_CHARS` and how long it was. A text cut already is left as it
    is (a refusal made from another's message, as Deepgram's query errors are from the language's):
    cut again, it said the length of the first cut instead of the text's."""
    if len(text) <= MESSAGE_CHARS:
        return text
    cut = CUT.search(text)
    if cut is not None and cut.start() == MESSAGE_CHARS:
        return text
    return f"{text[:MESSAGE_CHARS]}… (cut: {len(text)} characters)"


class ProtocolError(Exception):
    """Input a protocol refuses: `code`, `message` (and `param`, the field at fault) go to the client,
    at most `MESSAGE_CHARS` of each; `fatal` ends the connection."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, param: str | None = None) -> None:
        message = _clipped(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.param = param and _clipped(param)


def json_object(data: str) -> dict[str, Any] | str:
    """A text frame as the JSON object it holds, or why it is not one, to finish the sentence "this
    one ...": a valid JSON text nested deeper than the parser goes, or with an integer longer than
    Python converts (4300 digits), was called not JSON."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        return "is not JSON"
    except RecursionError:
        return "nests deeper than this server reads"
    except ValueError:  # the one other error json.loads raises: int()'s digit limit
        return "holds a number of more digits than this server reads"
    return value if isinstance(value, dict) else "is JSON, but not an object"


def checked_language(core: Core, code: object, param: str) -> str | None:
    """The engine's code for the language a client named (`en-US` counts as `en`); None when it named
    none (null or empty text: whether that means the daemon's default or detection is the protocol's)."""
    if code is None or code == "":
        return None
    if not isinstance(code, str):
        raise ProtocolError("invalid_type", f"{param} must be a language code, got {code!r}", param=param)
    engine = core.engine_info
    supported = engine.supported_language(code)
    if supported is None:
        message = f"{param}: {code!r} is not one of the languages of this engine ({', '.join(engine.languages)})"
        raise ProtocolError("unsupported_language", message, param=param)
    return supported


def checked_context(core: Core, text: str, param: str) -> str:
    """`text` if it fits `max_context_chars`: a huge biasing context would slow every decode."""
    limit = core.settings.max_context_chars
    if len(text) > limit:
        message = (
            f"the biasing context ({param}) is {len(text)} characters, over the limit of {limit} (max_context_chars)"
        )
        raise ProtocolError("context_too_long", message, param=param)
    return text


def biasing_problems(core: Core, text: str, terms: Sequence[str], fields: str) -> list[str]:
    """What is over the limits in a client's biasing text and terms (names, keywords; `fields` names
    them): as the engine gets them (`biasing_context`), `max_context_chars`; and `MAX_CLIENT_TERMS`."""
    problems = []
    try:
        checked_context(core, biasing_context((), terms, text), fields)
    except ProtocolError as exc:
        problems.append(exc.message)
    if len(terms) > MAX_CLIENT_TERMS:
        problems.append(f"{len(terms)} names and terms ({fields}), over the limit of {MAX_CLIENT_TERMS}")
    return problems


def checked_biasing(core: Core, text: str, terms: Sequence[str], param: str, fields: str) -> None:
    """`ProtocolError` `context_too_long` naming `param` if a client's biasing is over a limit
    (`biasing_problems`): for protocols that refuse it whole."""
    problems = biasing_problems(core, text, terms, fields)
    if problems:
        raise ProtocolError("context_too_long", "; ".join(problems), param=param)


MAX_CLOSE_REASON_BYTES = 123
"""A WebSocket Close reason's room (RFC 6455: 125 bytes of payload less the code's 2)."""


def close_reason(sentence: str) -> str:
    """The sentence cut to a Close reason's 123 bytes, at a character's end."""
    return sentence.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def echoable(text: str) -> str:
    """A client's text made fit to send back in JSON: a lone surrogate (a form field name that was
    not UTF-8, or a `\\ud800` escape in a client's JSON) is written out as its escape, `\\ud800`,
    since JSON parsers that follow the standard strictly (pydantic's, Rust's) refuse a whole body
    that holds one."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def openai_error(
    code: str, message: str, *, kind: str = "invalid_request_error", param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object, as its SDKs read it (REST bodies, Realtime `error` events, refusals);
    `message` and `param` may hold what a client sent (`echoable`)."""
    return {"message": echoable(message), "type": kind, "param": param and echoable(param), "code": code}


def deepgram_error(code: str, message: str) -> dict[str, Any]:
    """Deepgram's error body, as its API answers a refused request (the upgrade of `/v1/listen` or `/v2/listen`);
    `message` may hold what a client sent (`echoable`)."""
    return {"err_code": code, "err_msg": echoable(message), "request_id": str(uuid.uuid4())}


def assemblyai_error(code: str, message: str) -> dict[str, Any]:
    """AssemblyAI's error body, as its API answers a refused request (the upgrade of `/v3/ws`), with
    the daemon's code beside it; `message` may hold what a client sent (`echoable`)."""
    return {"error": echoable(message), "code": code}


def elevenlabs_error(code: str, message: str) -> dict[str, Any]:
    """ElevenLabs' HTTP error body (`detail` with a `status` code and a `message`), as its SDK and
    LiveKit's plugin read it; `message` may hold what a client sent (`echoable`)."""
    return {"detail": {"status": code, "message": echoable(message)}}


def cartesia_error(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Cartesia's error body (a machine code, a short title, a sentence, the request's id), as its
    API answers a refused request; `message` may hold what a client sent (`echoable`)."""
    title = code.replace("_", " ").capitalize()
    identity = request_id or str(uuid.uuid4())
    return {"error_code": code, "title": title, "message": echoable(message), "request_id": identity}


def soniox_error(status: int, message: str) -> dict[str, Any]:
    """Soniox's error message (an HTTP-like `error_code` and an `error_message`), as its clients read
    it in the stream and in a refused upgrade's body; `message` may hold what a client sent (`echoable`)."""
    return {"error_code": status, "error_message": echoable(message)}


def speechmatics_error(status: int, message: str) -> dict[str, Any]:
    """Speechmatics' HTTP error body (the status again as `code`, and an `error` sentence), for a
    refused upgrade; in the stream its errors are `Error` messages. `message` may hold what a client
    sent (`echoable`)."""
    return {"code": status, "error": echoable(message)}


def mistral_error(status: int, code: str, message: str) -> dict[str, Any]:
    """Mistral's HTTP error body, for a refused upgrade (in the stream its errors are `error` events);
    `message` may hold what a client sent (`echoable`)."""
    return {"object": "error", "message": echoable(message), "type": code, "param": None, "code": status}


def smallest_error(status: int, code: str, message: str) -> dict[str, Any]:
    """Smallest AI's error (`type` error, an HTTP-like `status`, a `message`), in the stream and as a
    refused request's body, the daemon's `code` beside them; `message` may hold what a client sent
    (`echoable`)."""
    return {"type": "error", "status": status, "code": code, "message": echoable(message)}


def xai_error(code: str, message: str) -> dict[str, Any]:
    """xAI's HTTP error body (`code` and an `error` sentence), for a refused upgrade (in the stream
    its errors are `error` events); `message` may hold what a client sent (`echoable`)."""
    return {"code": code, "error": echoable(message)}


def gradium_error(message: str, code: int = 1008) -> dict[str, Any]:
    """Gradium's error: `message`, and `code` the WebSocket close code of its kind (a refused upgrade's
    HTTP body: a policy violation's); `message` may hold what a client sent (`echoable`)."""
    return {"type": "error", "message": echoable(message), "code": code}


def zoom_error(status: int, code: str, message: str) -> dict[str, Any]:
    """Zoom's HTTP error body for a refused upgrade: the status as `code`, the daemon's own beside it,
    and the `message` Pipecat's service reports; `message` may hold what a client sent (`echoable`).
    In the stream its errors are `error` events."""
    return {"code": status, "error_code": code, "message": echoable(message)}


def telnyx_error(status: int, code: str, message: str) -> dict[str, Any]:
    """Telnyx's HTTP error body (its v2 API's `{"errors": [{"code", "title", "detail"}]}`: the daemon's
    code, the status's phrase as the title, the sentence as the detail), for a refused upgrade; in the
    stream its errors are `error` messages. `message` may hold what a client sent (`echoable`)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"errors": [{"code": code, "title": title, "detail": echoable(message)}]}


def grpc_status(number: int, code: str, message: str) -> dict[str, Any]:
    """A gRPC status as a gateway writes it in JSON: its number, the sentence, and the daemon's code
    as an `ErrorInfo` reason; `message` may hold what a client sent (`echoable`)."""
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code, "domain": "satellite-asr"}
    return {"code": number, "message": echoable(message), "details": [info]}


def inworld_error(status: int, code: str, message: str) -> dict[str, Any]:
    """Inworld's HTTP error body for a refused upgrade, a gRPC status (`grpc_status`) numbered 16 for
    a key refused, 7 forbidden, 8 when busy, else 3. In the stream its errors are `{"error": {...}}`
    messages of the same shape, with the status's name."""
    return grpc_status({401: 16, 403: 7, 429: 8, 503: 8}.get(status, 3), code, message)


def azure_error(status: int, message: str) -> dict[str, Any]:
    """Azure AI Speech's HTTP error body (`{"error": {"code", "message"}}`, the status as the code),
    for a refused upgrade. `message` may hold what a client sent (`echoable`)."""
    return {"error": {"code": str(status), "message": echoable(message)}}


def utc_now() -> str:
    """Now as Gladia's messages date them: ISO 8601, UTC, milliseconds."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gladia_error(path: str, status: int, message: str) -> dict[str, Any]:
    """Gladia's error body, as its API answers a refused request: the status, a sentence, and for a
    refused input the sentence again as its one `validation_errors` entry (which Gladia's SDK shows);
    `message` may hold what a client sent (`echoable`)."""
    body: dict[str, Any] = {
        "timestamp": utc_now(),
        "path": path,
        "request_id": f"G-{uuid.uuid4().hex[:8]}",
        "statusCode": status,
        "message": echoable(message),
    }
    if status in (400, 422):
        body["validation_errors"] = [echoable(message)]
    return body


def open_session(
    core: Core,
    protocol: str,
    options: SessionOptions,
    emit: Emit,
    close_connection: CloseConnection,
    *,
    quiet_s: float = 0.0,
    arriving: Callable[[], bool] = lambda: False,
) -> Session:
    """A new session, or a fatal `server_busy` error when the daemon is at `max_sessions`.

    `quiet_s`: the quiet the session takes over from the one it follows on the same connection;
    `arriving`: whether a message of the client is arriving (`SessionManager.create`)."""
    try:
        return core.sessions.create(protocol, options, emit, close_connection, quiet_s=quiet_s, arriving=arriving)
    except ServerBusy as exc:
        raise ProtocolError("server_busy", str(exc), fatal=True) from None


def peer_gone(transport: asyncio.BaseTransport | None, *, half_close_ends: bool) -> bool:
    """Whether the client closed or reset its connection, seen even while reading it is paused.

    A throttled client is not read, so its data fills the socket buffers and asyncio stops watching
    the socket: no `connection_lost` comes until what is queued is read. The kernel knows sooner:
    a FIN (POLLRDHUP) or reset (POLLHUP, POLLERR) shows in a zero-timeout poll behind unread data.
    With `half_close_ends` a client that only half-closes is taken as gone, as the WebSocket server
    takes an EOF anyway; without (Wyoming), only a reset or a full close is: the events before the
    FIN (an `audio-stop`) are still read and answered.
    """
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    # POLLRDHUP is Linux's; elsewhere only a reset is seen before the queued audio is read
    half_closed = getattr(select, "POLLRDHUP", 0) if half_close_ends else 0
    poller.register(sock.fileno(), half_closed | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


WEBSOCKET_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
CLOSE_HANDSHAKE_S = 2.0
"""How long the server's Close waits for the client's (`WebSocketResponse(timeout=...)`): a client
that reads but never answers must not hold up the daemon's shutdown or an idle expiry for long."""


def client_gone() -> web.Response:
    """What a handler returns when its client has left: aiohttp's write of it fails quietly (499 is
    nginx's status for a client that closed its request)."""
    return web.Response(status=499, reason="Client Closed Request")


async def accepted(ws: web.WebSocketResponse, request: web.Request) -> bool:
    """Answers the upgrade (101); False when the client has left already, and the handler returns
    `client_gone()` (`ws`, half prepared, cannot be returned). A client that half-closes or resets as
    soon as its request is sent is gone before the 101 (a half-close makes aiohttp close the
    transport): the write's `ConnectionError` escaping the handler was an ERROR and a traceback in
    the log, one per such client."""
    try:
        await ws.prepare(request)
    except ConnectionError as exc:
        log.debug("%s: the client left before its WebSocket upgrade was answered: %s", request.path, exc)
        return False
    return True


REFUSED_FRAME_CODES = frozenset({WSCloseCode.PROTOCOL_ERROR, WSCloseCode.INVALID_TEXT, WSCloseCode.MESSAGE_TOO_BIG})
"""The codes aiohttp closes with when its reader refuses a client's frame (a message over the size
limit, text that is not UTF-8, a broken frame)."""


class LingeringResponse(web.WebSocketResponse):
    """A `WebSocketResponse` whose Close for a refused frame reaches a client that is still sending.

    aiohttp refuses a frame as soon as it reads its header (an oversized one: before buffering it),
    sends its Close and closes the socket with the rest of the frame still arriving. A socket closed
    with data unread is reset, and the reset overtook the Close or made the client's next write fail
    before it read it: the client saw 1006, not 1009 (1 in 300 clients of the fuzzing; most clients
    sending on after such a frame to a daemon in another thread or process). So a close for a
    refused frame holds a duplicate of the socket, which keeps the connection open as aiohttp closes
    its own, and `linger`s on it: what the client still sends (the rest of its frame) is read and
    dropped until its answering Close or its own close, for at most `CLOSE_HANDSHAKE_S` and twice
    the message limit in bytes; the connection counts against `max_http_connections` until then
    (`kept_counted`), as it is open. The server's end of the connection comes after that, not at once: a
    client that closes its connection at the server's end while its own writes are still buffered
    is, with websockets on asyncio, an `AttributeError` in the client instead of its 1009 (asyncio's
    `abort` after a deferred close that has completed). Over TLS the same (asyncio's TLS shutdown
    did not keep the connection open either), the records read undecrypted. Not when the client is
    not reading (what the server sent is still queued), as it would not read the Close anyway; over
    TLS that is not seen (the queued records lie below the TLS layer's buffer), so such a client gets
    the linger, bounded and counted all the same.
    """

    def __init__(self, *, max_msg_size: int, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_msg_size, **kwargs)
        self._linger_bytes = 2 * max_msg_size
        self._transport: asyncio.BaseTransport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter:
        self._transport = request.transport
        return await super().prepare(request)

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        spare = None if self.closed or code not in REFUSED_FRAME_CODES else self._spare_socket()
        if spare is None:
            return await super().close(code=code, message=message, drain=drain)
        with kept_counted(self._transport), spare:  # open on `spare`, it is still an HTTP connection
            closed = await super().close(code=code, message=message, drain=drain)
            transport = self._transport
            if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size() == 0:
                await linger(spare, CLOSE_HANDSHAKE_S, self._linger_bytes, code)
        return closed

    def _spare_socket(self) -> socket.socket | None:
        """A duplicate of the connection's socket (under TLS, if any), or None when there is none to be had."""
        sock = self.get_extra_info("socket")
        if sock is None:
            return None
        try:
            spare: socket.socket = sock.dup()
        except OSError:  # out of file descriptors: closed at once, as aiohttp does
            return None
        return spare


async def linger(sock: socket.socket, seconds: float, most_bytes: int, code: int) -> None:
    """Read and drop what comes on `sock` until the peer closes, an error, `seconds` or `most_bytes`,
    or until what came ends with the client's Close answering the server's Close with `code`: it is
    the last thing the client sends, and the client then waits for the server to end the connection
    (websockets clients waited the 2 s each, and the CI fuzzing of `/v1/stream` took four times as
    long). Over TLS the answer is not seen (the records are not decrypted), but asyncio's TLS
    shutdown makes a client close of its own."""
    loop = asyncio.get_running_loop()
    buffer = bytearray(1 << 16)
    tail = b""
    left = most_bytes
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(seconds):
            while left > 0:
                read = await loop.sock_recv_into(sock, buffer)
                if not read:
                    return
                left -= read
                tail = (tail + buffer[max(0, read - CLOSE_FRAME_BYTES) : read])[-CLOSE_FRAME_BYTES:]
                if ends_with_close(tail, code):
                    return


CLOSE_FRAME_BYTES = 2 + 4 + 125
"""The longest Close frame a client sends: its header, its mask, a code and a reason of 123 bytes."""


def ends_with_close(data: bytes, code: int) -> bool:
    """Whether `data` ends with a client's Close frame (masked) whose code is `code`: a client answers
    a Close with the same code (RFC 6455, 5.5.1). Payload that happens to end so, at the end of a
    read, would have to match on 4 bytes besides its mask."""
    for size in range(2, min(125, len(data) - 6) + 1):
        frame = data[-(size + 6) :]
        if frame[0] == 0x88 and frame[1] == 0x80 | size and (frame[6] ^ frame[2]) << 8 | (frame[7] ^ frame[3]) == code:
            return True
    return False


def read_ahead_response(max_msg_size: int, *subprotocols: str) -> web.WebSocketResponse:
    """A WebSocket response for a `ReadAhead` to read: autoclose and autoping off (`ReadAhead`
    answers a client's Close and pings), aiohttp's close waiting at most `CLOSE_HANDSHAKE_S` for the
    client's, a ping every 30 s, and a Close for a refused frame that reaches the client
    (`LingeringResponse`). The subprotocol answered is the first the client offered of `subprotocols`."""
    return LingeringResponse(
        max_msg_size=max_msg_size,
        heartbeat=30.0,
        protocols=subprotocols,
        autoclose=False,
        autoping=False,
        timeout=CLOSE_HANDSHAKE_S,
    )


class ReadAhead:
    """A WebSocket's messages, read by a task of their own up to `websocket_read_ahead_mb` ahead of
    the handler.

    A client's keep-alive ping reaches aiohttp behind the audio sent before it, and is answered
    only as it is read. A handler held back by back-pressure (a file sent faster than real time)
    would read nothing, and the websockets library (the OpenAI SDK's client) drops a connection
    whose ping goes 20 s unanswered: a file sent at full speed was cut after about 50 s. Read ahead,
    the pings are answered while the audio waits; past the limit reading stops (TCP back-pressure),
    counting the message the handler has in hand. Use it as `async with`.

    The server's Close goes through `close` too. The `WebSocketResponse` is made with
    `autoclose=False`, and a client's Close is answered here: at once, dropping what was read ahead,
    unless something before it is `wanted_after_close` (an `end`, whose finals the client reads until
    the server's Close: websocat sends its input, `end` and Close at once); then the Close comes in
    its turn. Once the server has closed, or the connection is gone, it gives only
    `WS_CLOSED_MESSAGE`: what was read ahead is for no one.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        settings: Settings,
        transport: asyncio.WriteTransport | None,
        wanted_after_close: Callable[[WSMessage], bool] = lambda _: False,
    ) -> None:
        self._ws = ws
        self._limit = settings.websocket_read_ahead_mb << 20
        self._write_timeout_s = settings.write_timeout_s
        self._transport = transport
        self._wanted_after_close = wanted_after_close
        self._answering = False
        """The reading task is answering the client's Close."""
        self._closing = asyncio.Lock()
        self._in_hand_wanted = False
        self._read: deque[WSMessage] = deque()
        self._held = 0  # bytes of the messages read and not handled yet, and of the one in hand
        self._in_hand = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._whole_at = time.monotonic()
        """When the last whole frame was read, pings and pongs too, or the reading began: data that
        came later is the start of the next message (`arriving`)."""

    async def __aenter__(self) -> ReadAhead:
        self._reader = asyncio.create_task(self._read_ahead())
        self._reader.add_done_callback(lambda _: self._arrived.set())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self._stop_reading()

    async def _read_ahead(self) -> None:
        while True:
            while self._held >= self._limit:
                self._room.clear()
                await self._room.wait()
            message = await self._ws.receive()
            self._whole_at = time.monotonic()
            if message.type == WSMsgType.PING:  # answered here, not by aiohttp, so that it counts in `_whole_at`
                await self._ws.pong(message.data)
                continue
            if message.type == WSMsgType.PONG:  # the answer to the heartbeat
                continue
            if message.type == WSMsgType.CLOSE and not self._still_wanted():
                self._read.clear()
                self._held = self._in_hand
                self._answering = True
                with contextlib.suppress(ConnectionError):  # the answer gave up: the connection is aborted
                    await self.close(WSCloseCode.OK)
            self._read.append(message)
            self._held += _size(message)
            self._arrived.set()
            if message.type in WEBSOCKET_ENDS:
                return
            del message  # not held while the handler has it: it may drop a big message's text early

    def arriving(self) -> bool:
        """Whether a message is arriving: part of it has come, not the rest (a big frame on a slow
        link). Closing the connection then would reset it as the client sends, losing the Close."""
        return last_received(self._transport) > self._whole_at

    async def close(self, code: int, reason: str = "") -> None:
        """The server's Close; a client that does not read it is dropped (`write_within`).

        aiohttp's `close()` waits for the client's Close (`CLOSE_HANDSHAKE_S`), reading what comes
        before it, only when no other task waits in `receive()`; else it closes the socket at once,
        and audio the client sent meanwhile makes the kernel reset the connection: the client lost
        the last error and the Close (1006). So the reading task stops first, unless it is the one
        answering the client's Close. One close at a time: a handler that ends waits for a close
        another task has under way (an idle timeout, shutdown), as aiohttp closes the socket once
        the handler returns.
        """
        await self._stop_reading()
        async with self._closing:
            closing = self._ws.close(code=code, message=reason.encode())
            await write_within(closing, self._write_timeout_s, self._transport)

    async def _stop_reading(self) -> None:
        """Cancel the reading task; one answering the client's Close is waited for instead (it ends
        then), so that its Close goes out whole."""
        reader = self._reader
        if reader is None or reader is asyncio.current_task():
            return
        if not self._answering:
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    def _still_wanted(self) -> bool:
        return self._in_hand_wanted or any(self._wanted_after_close(message) for message in self._read)

    async def receive(self) -> WSMessage:
        """The next message, as `WebSocketResponse.receive` gives it; the one before is done with."""
        assert self._reader is not None, "use ReadAhead as `async with`"
        if self._ws.closed:  # by the server, or the connection is gone: what was read is for no one
            self._read.clear()
            return WS_CLOSED_MESSAGE
        self._held -= self._in_hand
        self._in_hand = 0
        self._in_hand_wanted = False
        self._room.set()
        while not self._read:
            if self._reader.done():
                if not self._reader.cancelled():  # stopped by `close`
                    self._reader.result()  # what broke the reading, if it broke
                return WS_CLOSED_MESSAGE  # after the end, as aiohttp gives it
            self._arrived.clear()
            await self._arrived.wait()
        message = self._read.popleft()
        self._in_hand = _size(message)
        self._in_hand_wanted = self._wanted_after_close(message)
        return message

    def __aiter__(self) -> ReadAhead:
        return self

    async def __anext__(self) -> WSMessage:
        """Messages until the connection closes, as iterating a `WebSocketResponse` gives them."""
        message = await self.receive()
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return message


MESSAGE_OVERHEAD_BYTES = 256
"""What `ReadAhead` counts for a message besides its data: Python holds about 150 bytes for each, so
a flood of tiny messages (errors for a client that does not read them) stays within the limit too."""


class FirstMessageWait:
    """`first_message_timeout_s` for a WebSocket holding no session yet. A message still arriving
    when the time is up (a big frame on a slow link, a busy machine) gets as long again, once: the
    client has not been idle, and closing it as it sends would reset the connection, losing the Close."""

    def __init__(self, reading: ReadAhead, timeout_s: float, since: str = "connecting") -> None:
        self._reading = reading
        self._timeout_s = timeout_s
        self._since = since
        """What the time counts from, for `expired`: an Azure turn after the first counts from its first message."""
        self._opened = time.monotonic()
        self._deadline = self._opened + timeout_s
        self._extended = False

    async def receive(self) -> WSMessage | None:
        """The next message; None once the time is up."""
        while True:
            try:
                async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                    return await self._reading.receive()
            except TimeoutError:
                if self._extended or not self._reading.arriving():
                    return None
                self._extended = True
                self._deadline += self._timeout_s

    def expired(self, awaited: str) -> str:
        """The sentence of the error once the time is up: nothing `awaited` came."""
        setting = "first_message_timeout_s"
        if self._extended:
            setting = f"twice {setting}: a message was arriving"
        return f"no {awaited} within {self._deadline - self._opened:g} s of {self._since} ({setting})"


def _size(message: WSMessage) -> int:
    """As Python holds it: a text with one character beyond the BMP takes 4 bytes a character."""
    return MESSAGE_OVERHEAD_BYTES + sys.getsizeof(message.data)


class PcmInput:
    """A session and the decoder of its wire PCM: what a streaming adapter feeds audio through.

    `transport` is the client's connection: a feed held back by back-pressure raises `ClientGone`
    when the client leaves meanwhile (`peer_gone`, which says what `half_close_ends` means)."""

    def __init__(
        self,
        core: Core,
        session: Session,
        decoder: PcmDecoder,
        transport: asyncio.BaseTransport | None,
        *,
        half_close_ends: bool = True,
    ) -> None:
        self.core = core
        self.session = session
        self.decoder = decoder
        self.transport = transport
        self.half_close_ends = half_close_ends

    def gone(self) -> bool:
        return peer_gone(self.transport, half_close_ends=self.half_close_ends)

    async def feed(self, data: bytes | bytearray) -> None:
        """Decode a frame and feed it; a frame that is not PCM of the format is `invalid_audio`, and
        none of it is fed. A big frame is decoded and fed a second of audio at a time, so only that
        much is resampled at once, and the decoded rest is not held while the session waits for room."""
        received = time.perf_counter()
        try:
            self.decoder.check_whole_frames(data)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", f"frame dropped: {exc}") from None
        if not data:  # no audio (a keep-alive): nothing to feed (see `Session.feed`), no frame to time
            return
        step = self.decoder.frame_bytes * self.decoder.sample_rate
        waited = 0.0
        view = memoryview(data)  # slices of it are not copies
        for offset in range(0, len(data), step):
            decoded = self.decoder.decode(view[offset : offset + step])
            if decoded.non_finite:
                self.core.metrics.invalid_samples.inc(decoded.non_finite)
            waited += await self.session.feed(decoded.samples, self.gone)
        server_time = time.perf_counter() - received - waited  # back-pressure waits are not work
        self.core.metrics.frame_seconds.labels(self.session.protocol).observe(server_time)

    async def drain(self) -> None:
        """Feed what the resampler still holds (end of stream, a commit, or before the format changes)."""
        await self.session.feed(self.decoder.flush(), self.gone)

    async def flush(self) -> None:
        """The client ends the utterance now: the resampler's tail is fed first, so it is part of it."""
        await self.drain()
        await self.session.flush()


def sarvam_error(code: str, message: str) -> dict[str, Any]:
    """Sarvam AI's HTTP error body (`{"error": {"message", "code"}}`), for a refused request or
    upgrade (in the stream its errors are `error` messages); `message` may hold what a client sent
    (`echoable`)."""
    return {"error": {"message": echoable(message), "code": code}}
