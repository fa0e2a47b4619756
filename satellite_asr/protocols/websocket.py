"""The WebSocket protocol (docs/protocol.md) at `/v1/stream`: wire messages <-> `Session` calls.

Thin by design: it validates and decodes what the client sends, and encodes what the session
emits. Endpointing, decoding and timers live in the session and its manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from satellite_asr.access import SUBPROTOCOL
from satellite_asr.audio import ENCODINGS, MAX_RATE, MIN_RATE, SAMPLE_RATE, PcmDecoder
from satellite_asr.config import VAD_FIELDS, ConfigError, coerce
from satellite_asr.core import Core
from satellite_asr.engines.base import EngineInfo
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionError, SessionEvent, SpeechStarted
from satellite_asr.limits import ConnectionLimit, TooManyConnections, write_within
from satellite_asr.protocols import (
    WEBSOCKET_ENDS,
    FirstMessageWait,
    PcmInput,
    ProtocolError,
    ReadAhead,
    accepted,
    checked_context,
    checked_language,
    client_gone,
    echoable,
    json_object,
    open_session,
    read_ahead_response,
)
from satellite_asr.session import SessionOptions

log = logging.getLogger(__name__)

PATH = "/v1/stream"
PROTOCOL_VERSION = "1"
MAX_FRAME_BYTES = 1 << 20
"""Largest client message; a larger one closes the connection with 1009 (checked before buffering)."""

CONFIG_FIELDS = {"type", "sample_rate", "encoding", "language", "context", "vad", "partials", "household_names"}
VAD_NAMES = {**{setting: key for key, setting in VAD_FIELDS.items()}, **{key: key for key in VAD_FIELDS}}
"""A `vad` key by its own name or its setting's (`vad_threshold`): what a misplaced field meant."""
CLOSE_CODES = {"server_busy": WSCloseCode.TRY_AGAIN_LATER}
"""The close code of a fatal error; any other fatal error is a policy violation (1008)."""


def parse_config(message: dict[str, Any], core: Core) -> tuple[SessionOptions, PcmDecoder]:
    """Session options and audio decoder from a `config` message, or `ProtocolError(invalid_config)`.

    `language` absent (or empty) means the daemon's default language, `null` asks the engine to detect it.
    """
    settings = core.settings
    unknown = set(message) - CONFIG_FIELDS
    if unknown:
        # the daemon's settings are flat (`silence_ms`), a session's endpointing values are in `vad`
        misplaced = sorted(f"vad.{VAD_NAMES[name]}" for name in unknown if name in VAD_NAMES)
        hint = f" (endpointing values go in the vad object: {', '.join(misplaced)})" if misplaced else ""
        raise _invalid_config(f"unknown field(s): {', '.join(sorted(unknown))}{hint}")
    encoding = message.get("encoding", "f32le")
    rate = message.get("sample_rate", SAMPLE_RATE)
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise _invalid_config(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise _invalid_config(f"sample_rate must be a whole number from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
    context = message.get("context")
    context = "" if context is None else context  # null: no context, as when left out; 0 or [] is an error
    partials = message.get("partials")
    if not isinstance(context, str):
        raise _invalid_config(f"context must be text, got {context!r}")
    try:
        named = checked_language(core, message.get("language"), "language")
        checked_context(core, context, "context")
    except ProtocolError as exc:
        raise _invalid_config(exc.message) from None
    # null asks for detection; absent or empty, the daemon's default.
    language = None if "language" in message and message["language"] is None else named or settings.default_language
    if partials is not None and not isinstance(partials, bool):
        raise _invalid_config(f"partials must be true or false, got {partials!r}")
    household_names = message.get("household_names", True)
    if not isinstance(household_names, bool):
        raise _invalid_config(f"household_names must be true or false, got {household_names!r}")
    vad = message.get("vad")
    vad = {} if vad is None else vad
    if not isinstance(vad, dict):
        raise _invalid_config("vad must be an object")
    unknown = set(vad) - set(VAD_FIELDS)
    if unknown:
        meant = sorted(f"{name} is {VAD_NAMES[name]}" for name in unknown if name in VAD_NAMES)
        hint = f" ({', '.join(meant)})" if meant else ""
        raise _invalid_config(f"unknown vad field(s): {', '.join(sorted(unknown))}{hint}")
    overrides: dict[str, Any] = {}
    for key, setting in VAD_FIELDS.items():
        if key in vad:
            if isinstance(vad[key], str) != (setting == "turn_detection"):
                kind = "text" if setting == "turn_detection" else "a number"
                raise _invalid_config(f"vad.{key} must be {kind}, got {vad[key]!r}")
            try:
                overrides[key] = coerce(setting, vad[key])
            except ConfigError as exc:
                raise _invalid_config(f"vad.{key}: {str(exc).split(': ', 1)[1]}") from None
    # A client that sets one silence gets it, moving the daemon's other one where it must (the page
    # allows 100 ms): the short silence is never longer than the long one. Both set must agree.
    if "silence_ms" in overrides and "min_silence_ms" not in overrides:
        overrides["min_silence_ms"] = min(settings.min_silence_ms, overrides["silence_ms"])
    elif "min_silence_ms" in overrides and "silence_ms" not in overrides:
        overrides["silence_ms"] = max(settings.silence_ms, overrides["min_silence_ms"])
    try:
        options = SessionOptions.from_settings(
            settings,
            vad=overrides,
            partials=partials,
            language=language,
            context=context,
            household_names=household_names,
        )
    except ConfigError as exc:
        raise _invalid_config(f"vad: {exc}") from None
    return options, PcmDecoder(encoding, rate)


def parse_message(data: str) -> dict[str, Any]:
    """A text frame as a JSON object, or `ProtocolError(invalid_message)`."""
    message = json_object(data)
    if isinstance(message, str):
        raise ProtocolError("invalid_message", f"text frames must be JSON objects; this one {message}")
    return message


def is_end(message: WSMessage) -> bool:
    """Whether a message is `end`: what the client sent before its Close is still wanted then."""
    if message.type != WSMsgType.TEXT:
        return False
    try:
        return parse_message(message.data).get("type") == "end"
    except ProtocolError:
        return False


def _invalid_config(message: str) -> ProtocolError:
    return ProtocolError("invalid_config", message, fatal=True)


def effective_config(options: SessionOptions, decoder: PcmDecoder, engine: EngineInfo) -> dict[str, Any]:
    e = options.endpointing
    return {
        "sample_rate": decoder.sample_rate,
        "encoding": decoder.encoding,
        "language": options.language,
        "context": echoable(options.context),  # the client's text, maybe with a lone surrogate
        "partials": options.partials,
        "household_names": options.household_names,
        "vad": {
            "threshold": e.threshold,
            "min_speech_ms": e.min_speech_ms,
            "turn_detection": e.turn_detection,
            "min_silence_ms": e.min_silence_ms,
            "silence_ms": e.silence_ms,
            "speech_pad_ms": e.speech_pad_ms,
            "partial_interval_ms": e.partial_interval_ms,
            "max_utterance_s": e.max_utterance_s,
        },
        "engine": engine.name,
        "model": engine.model,
        "languages": engine.languages,
    }


def encode_event(event: SessionEvent) -> dict[str, Any] | None:
    """The JSON message for a session event (None: the event has no WebSocket message)."""
    if isinstance(event, SpeechStarted):
        return {"type": "speech_start", "utterance_id": event.utterance_id, "start": round(event.start, 3)}
    if isinstance(event, PartialTranscript):
        return {"type": "partial", "utterance_id": event.utterance_id, "text": event.text, "is_speech_final": False}
    if isinstance(event, FinalTranscript):
        return {
            "type": "final",
            "utterance_id": event.utterance_id,
            "text": event.text,
            "is_speech_final": event.is_speech_final,
            "endpoint": event.endpoint,
            "start": round(event.start, 3),
            "end": round(event.end, 3),
            "language": event.language,
        }
    if isinstance(event, SessionError):
        return {"type": "error", "code": event.code, "message": event.message}
    return None


class _Connection:
    """State of one WebSocket connection: at most one session, created by config or first audio."""

    def __init__(self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead) -> None:
        self.ws = ws
        self.core = core
        self.request = request
        self.reading = reading
        self.input: PcmInput | None = None
        self.audio_seen = False
        self.finished = False

    async def send(self, message: dict[str, Any]) -> None:
        """Raises `SlowClient` (a `ConnectionError`) and drops the client when it does not read."""
        if not self.ws.closed:
            await write_within(self.ws.send_json(message), self.core.settings.write_timeout_s, self.request.transport)

    async def emit(self, event: SessionEvent) -> None:
        message = encode_event(event)
        if message is not None:
            await self.send(message)

    async def error(self, code: str, message: str) -> None:
        """`message` may quote the client's keys or values (`echoable`)."""
        self.core.metrics.errors.labels(code).inc()
        await self.send({"type": "error", "code": code, "message": echoable(message)})

    async def close(self, code: int, reason: str = "") -> None:
        await self.reading.close(code, reason)

    async def close_by_server(self, reason: str) -> None:
        self.finished = True
        await self.close(WSCloseCode.GOING_AWAY, reason)

    def abort(self) -> None:
        """Cut the TCP connection (shutdown ran out of time: the client does not answer)."""
        if self.request.transport is not None:
            self.request.transport.abort()

    async def on_text(self, data: str) -> None:
        message = parse_message(data)
        kind = message.get("type")
        if kind == "config":
            await self.configure(message)
        elif kind == "flush":
            if self.input is not None:
                await self.input.flush()
        elif kind == "end":
            await self.end()
        else:
            raise ProtocolError("invalid_message", f"unknown message type {kind!r}; expected config, flush or end")

    async def configure(self, message: dict[str, Any]) -> None:
        if self.audio_seen:
            raise ProtocolError("config_locked", "config must come before the first audio frame")
        options, decoder = parse_config(message, self.core)
        quiet_s = self.input.session.quiet_seconds(time.monotonic()) if self.input is not None else 0.0
        await self.release("reconfigured")
        await self.open_session(options, decoder, quiet_s)

    async def open_session(self, options: SessionOptions, decoder: PcmDecoder, quiet_s: float = 0.0) -> None:
        session = open_session(
            self.core,
            "websocket",
            options,
            self.emit,
            self.close_by_server,
            quiet_s=quiet_s,
            arriving=self.reading.arriving,
        )
        self.input = PcmInput(self.core, session, decoder, self.request.transport)
        config = effective_config(options, decoder, self.core.engine_info)
        await self.send({"type": "session_created", "session_id": session.id, "config": config})

    async def on_binary(self, data: bytes) -> None:
        if not data:  # no audio (a keep-alive): it neither opens a session nor locks the config
            return
        if self.input is None:
            await self.open_session(*parse_config({}, self.core))
        assert self.input is not None
        await self.input.feed(data)
        self.audio_seen = True

    async def end(self) -> None:
        self.finished = True
        if self.input is not None:
            await self.input.drain()
            await self.core.sessions.release(self.input.session, "end", finalize=True)
            self.input = None
        await self.close(WSCloseCode.OK)

    async def leave_to_server(self) -> None:
        """The server is ending the session (idle timeout, shutdown): nothing more of the client's is
        taken (audio read ahead is dropped), and its finals and Close come from the server's close."""
        assert self.input is not None
        await self.core.sessions.release(self.input.session, "closed by the server", finalize=True)
        self.input = None

    async def release(self, reason: str) -> None:
        """The client left (or reconfigured): what is in flight is cancelled."""
        if self.input is not None:
            await self.core.sessions.release(self.input.session, reason, finalize=False)
            self.input = None


class WebSocketHandler:
    """aiohttp handler for `/v1/stream`; `Access` has checked Host, Origin, key and subprotocols before it runs."""

    def __init__(self, core: Core) -> None:
        self.core = core
        settings = core.settings
        self.connections = ConnectionLimit(
            "websocket",
            settings.max_websocket_connections,
            settings.max_connections_per_address,
            total_setting="max_websocket_connections",
        )
        self.open: set[_Connection] = set()
        """Connections being served, for shutdown."""

    async def close_all(self) -> None:
        """Shutdown: every connection still open is closed with 1001 (going away)."""
        closing = [c.close_by_server("shutdown") for c in list(self.open)]
        await asyncio.gather(*closing, return_exceptions=True)

    def abort_all(self) -> None:
        for connection in self.open:
            connection.abort()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # aiohttp refuses an uncompressed message as long as its limit: one more lets exactly 1 MiB through
        # (a compressed one it checks after inflating, with >, so that one may be a byte over)
        # `ReadAhead` answers a client's Close at once, or after an `end` sent before it
        ws = read_ahead_response(MAX_FRAME_BYTES + 1, SUBPROTOCOL)
        try:
            with self.connections.opened(request.remote or ""):
                if ws.can_prepare(request).ok:
                    return await self._serve(request, ws)
        except TooManyConnections as exc:
            self.core.metrics.errors.labels("too_many_connections").inc()
            return _refusal(503, "too_many_connections", str(exc), {"Retry-After": "5"})
        # A browser or curl opening the URL: say what it is. Past the caps, so that a plain GET is
        # refused as an upgrade would be: a browser sees a refused upgrade only as 1006 and the page
        # asks again this way.
        explanation = "this endpoint speaks the WebSocket protocol of docs/protocol.md; connect a WebSocket client"
        return _refusal(426, "websocket_required", explanation, {"Upgrade": "websocket", "Connection": "Upgrade"})

    async def _serve(self, request: web.Request, ws: web.WebSocketResponse) -> web.StreamResponse:
        if not await accepted(ws, request):
            return client_gone()
        reading = ReadAhead(ws, self.core.settings, request.transport, is_end)
        connection = _Connection(ws, self.core, request, reading)
        self.open.add(connection)
        reason = "disconnect"
        # Until a session opens; messages that open none (flush, bad JSON) do not push it back.
        waiting = FirstMessageWait(reading, self.core.settings.first_message_timeout_s)
        try:
            async with reading as messages:
                while True:
                    message = await (messages.receive() if connection.input is not None else waiting.receive())
                    if message is None:
                        reason = "timeout"
                        await self._close_idle(connection, waiting.expired("config or audio"))
                        break
                    if message.type in WEBSOCKET_ENDS:
                        break
                    if connection.input is not None and connection.input.session.closed:
                        await connection.leave_to_server()
                        break
                    try:
                        if message.type == WSMsgType.TEXT:
                            await connection.on_text(message.data)
                        elif message.type == WSMsgType.BINARY:
                            await connection.on_binary(message.data)
                    except ProtocolError as exc:
                        await connection.error(exc.code, exc.message)
                        if exc.fatal:
                            reason = exc.code
                            close_code = CLOSE_CODES.get(exc.code, WSCloseCode.POLICY_VIOLATION)
                            await connection.close(close_code, exc.code)
                    if connection.finished:
                        reason = "end"
                        break
            if ws.exception() is not None:
                log.info("websocket closed with error: %s", ws.exception())
        except ConnectionError as exc:  # SlowClient included: the connection is gone already
            log.info("websocket connection dropped: %s", exc)
            reason = "disconnect"
        finally:
            self.open.discard(connection)
            await connection.release(reason)
            with contextlib.suppress(ConnectionError):  # when another task is closing, its close ends first
                await connection.close(WSCloseCode.OK)
        return ws

    @staticmethod
    async def _close_idle(connection: _Connection, message: str) -> None:
        try:
            await connection.error("timeout", message)
            await connection.close(WSCloseCode.POLICY_VIOLATION, "timeout")
        except ConnectionError:
            pass


def _refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An upgrade refused before it happens: plain HTTP with the protocol's error object as JSON."""
    return web.json_response({"type": "error", "code": code, "message": message}, status=status, headers=headers)
