"""OpenAI's Realtime transcription API at `/v1/realtime` (docs/openai.md): wire events <-> `Session` calls.

A session is created at connect with the defaults and announced first (`session.created`, or beta
`transcription_session.created` when the client sent `OpenAI-Beta: realtime=v1`). Each utterance is
a conversation item: `speech_started` when VAD hears it, deltas of the text the engine is sure of
(`PartialTranscript.stable_text` as it grows), then `speech_stopped`, `committed`, the item, and
`completed` with the final, a fresh decode of the whole item; `failed` instead when the engine fails.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from satellite_asr.access import SUBPROTOCOL
from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.core import Core
from satellite_asr.events import (
    FinalTranscript,
    PartialTranscript,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
)
from satellite_asr.limits import ConnectionLimit, TooManyConnections, write_within
from satellite_asr.protocols import (
    PcmInput,
    ProtocolError,
    ReadAhead,
    accepted,
    client_gone,
    echoable,
    json_object,
    open_session,
    openai_error,
    read_ahead_response,
)
from satellite_asr.protocols.openai_realtime_config import (
    RealtimeConfig,
    apply_update,
    beta_session,
    from_query,
    ga_session,
)
from satellite_asr.session import DECODING_OPTIONS, Session

log = logging.getLogger(__name__)

PATH = "/v1/realtime"
PROTOCOL = "openai-realtime"
MAX_MESSAGE_BYTES = 24 << 20
"""Largest client event: an append of OpenAI's limit of 15 MiB of audio, base64-encoded, fits."""
OFF_LOOP_CHARS = 1 << 16
"""Base64 audio of an append this long or longer (over a second of pcm16) is decoded in a worker thread."""
B64_SLICE = 1 << 20
"""Characters decoded at a time there (a multiple of 4): binascii holds the GIL while it works, so
the event loop gets it back between slices (a few ms each), not after the whole append."""
MIN_COMMIT_MS = 100
"""Less uncommitted audio than this makes a commit an error, as OpenAI's does."""
CLIENT_EVENTS = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
SERVER_ERROR_CODES = {"server_busy", "engine_error", "shutdown"}
"""Error codes that are the server's fault (`server_error`); all others are `invalid_request_error`."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class _Item:
    """The conversation item of one utterance, and the transcript deltas sent for it."""

    id: str
    sent: str = ""
    failure: SessionError | None = None
    """Why its transcription failed (`engine_error`, or `shutdown` out of time), if it did."""


def user_audio_item(item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


class _Connection:
    """One client: its settings, its current session (one at a time) and the items of its utterances.

    A `session.update` that changes how speech is endpointed or decoded finalizes the session (the
    utterance in progress gets its item and transcript) and opens a new one; a change of audio
    format alone swaps the decoder. Item times count all audio of the connection.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        beta: bool,
        reading: ReadAhead,
        config: RealtimeConfig,
    ) -> None:
        self.ws = ws
        self.reading = reading
        self.core = core
        self.transport = request.transport
        self.beta = beta
        self.config = config
        """The defaults, or as the query set them (Together AI's dialect)."""
        self.input: PcmInput | None = None
        self.generation = 0
        """Counts sessions, so events of a finalized one are told apart from the current one's."""
        self.items: dict[tuple[int, int], _Item] = {}
        self.previous_item_id: str | None = None
        self.offset_s = 0.0
        """Audio received by the connection's earlier sessions."""
        self.commit_mark = 0
        """The current session's samples received when its audio was last committed or cleared."""
        self.committing = False
        self.speaking: tuple[int, int] | None = None
        """The key of the item whose speech started and has not ended."""

    @property
    def session(self) -> Session:
        assert self.input is not None
        return self.input.session

    async def send(self, event: dict[str, Any]) -> None:
        """Raises `SlowClient` (a `ConnectionError`) and drops the client when it does not read."""
        if not self.ws.closed:
            message = self.ws.send_json({"event_id": new_id("event"), **event})
            await write_within(message, self.core.settings.write_timeout_s, self.transport)

    async def error(self, exc: ProtocolError, event_id: str | None) -> None:
        self.core.metrics.errors.labels(exc.code).inc()
        kind = "server_error" if exc.code in SERVER_ERROR_CODES else "invalid_request_error"
        error = {
            **openai_error(exc.code, exc.message, kind=kind, param=exc.param),
            "event_id": event_id and echoable(event_id),
        }
        await self.send({"type": "error", "error": error})

    async def close(self, code: int, reason: str) -> None:
        await self.reading.close(code, reason)

    async def close_by_server(self, reason: str) -> None:
        await self.close(WSCloseCode.GOING_AWAY, reason)

    async def open_session(self, created: bool, quiet_s: float = 0.0) -> None:
        options = self.config.session_options(self.core.settings)
        self.generation += 1
        emit = functools.partial(self.on_event, self.generation)
        session = open_session(
            self.core, PROTOCOL, options, emit, self.close_by_server, quiet_s=quiet_s, arriving=self.reading.arriving
        )
        self.input = PcmInput(self.core, session, self.config.decoder(), self.transport)
        self.commit_mark = 0
        await self.announce("created" if created else "updated")

    async def announce(self, what: str) -> None:
        session_id = f"sess_{self.session.id}"
        options, engine = self.session.options, self.core.engine_info
        if self.beta:
            body = beta_session(session_id, self.config, options, engine)
            kind = "session" if self.config.together and what == "created" else "transcription_session"
            await self.send({"type": f"{kind}.{what}", "session": body})
        else:
            await self.send(
                {"type": f"session.{what}", "session": ga_session(session_id, self.config, options, engine)}
            )

    async def release(self, *, finalize: bool) -> None:
        if self.input is not None:
            if finalize:
                await self.input.drain()
            session, self.input = self.input.session, None
            await self.core.sessions.release(session, "reconfigured" if finalize else "disconnect", finalize=finalize)
            self.offset_s += session.seconds_received

    async def on_text(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("session.update", "transcription_session.update"):
            await self.update(message, beta=kind == "transcription_session.update")
        elif kind == "input_audio_buffer.append":
            await self.append(message)
        elif kind == "input_audio_buffer.commit":
            await self.commit()
        elif kind == "input_audio_buffer.clear":
            await self.clear()
        else:
            supported = ", ".join(CLIENT_EVENTS)
            message_text = f"unknown or unsupported event type {kind!r}; this server transcribes and takes {supported}"
            raise ProtocolError("invalid_value", message_text, param="type")

    async def update(self, message: dict[str, Any], *, beta: bool) -> None:
        config = apply_update(self.config, message, beta, self.core)
        self.beta = beta
        settings = self.core.settings
        # Like with like: the session's own options also hold the home's names, added when it opened.
        old, new = self.config.session_options(settings), config.session_options(settings)
        decoding = {name: getattr(new, name) for name in DECODING_OPTIONS}
        if new != old and replace(old, **decoding) == new:  # what is decoded with: from the next utterance
            self.session.change_decoding(**decoding)
        elif new != old:  # how speech is endpointed: the utterance in progress ends first
            quiet_s = self.session.quiet_seconds(time.monotonic())
            await self.release(finalize=True)
            self.config = config
            await self.open_session(created=False, quiet_s=quiet_s)
            return
        if (config.encoding, config.sample_rate) != (self.config.encoding, self.config.sample_rate):
            assert self.input is not None
            await self.input.drain()
            self.input.decoder = config.decoder()
        self.config = config
        await self.announce("updated")

    async def append(self, message: dict[str, Any]) -> None:
        """A big append is decoded from base64 in a worker thread (`PcmInput` feeds it a second at a
        time): one of 24 MiB held the event loop for 0.3 s and about 76 MB while it waited for room."""
        audio = message.pop("audio", None)  # the event's text then dies with `audio`, once decoded
        if not isinstance(audio, str):
            raise ProtocolError("invalid_type", f"audio must be base64 text, got {audio!r:.40}", param="audio")
        try:
            data: bytes | bytearray
            if len(audio) < OFF_LOOP_CHARS:
                data = base64.b64decode(audio, validate=True)
            else:
                data = await asyncio.to_thread(_b64decode_in_slices, audio)
        except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
            raise ProtocolError("invalid_value", f"audio is not valid base64 ({exc}); dropped", param="audio") from None
        del audio
        assert self.input is not None
        await self.input.feed(data)

    async def commit(self) -> None:
        """End the item now: the utterance in progress (or a word the commit cut short, which the
        flush makes one), or audio in which VAD heard no speech. Either way nothing heard before
        the commit reaches into the next item."""
        assert self.input is not None
        await self.input.drain()  # the resampler's tail is the item's last milliseconds
        session = self.session
        uncommitted_ms = (session.samples_received - self.commit_mark) * 1000 / SAMPLE_RATE
        spoken, utterances = session.in_utterance, session.utterances
        self.committing = True
        try:
            await session.flush()
        finally:
            self.committing = False
        if not spoken and session.utterances == utterances:
            if uncommitted_ms < MIN_COMMIT_MS:
                message = (
                    f"buffer too small: {uncommitted_ms:.0f} ms of audio since the last commit, "
                    f"at least {MIN_COMMIT_MS} ms is needed"
                )
                raise ProtocolError("input_audio_buffer_commit_empty", message)
            item = _Item(new_id("item"))
            await self.committed(item)
            usage = {"type": "duration", "seconds": round(uncommitted_ms / 1000, 3)}
            await self.send(self.completed(item, "", usage))
        self.commit_mark = session.samples_received

    async def clear(self) -> None:
        """Drop the uncommitted audio: the utterance in progress ends without an item."""
        await self.session.clear()
        if self.speaking is not None:
            self.items.pop(self.speaking, None)
            self.speaking = None
        self.commit_mark = self.session.samples_received
        await self.send({"type": "input_audio_buffer.cleared"})

    async def committed(self, item: _Item) -> None:
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item.id, "previous_item_id": self.previous_item_id}
        )
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self.send({"type": added, "item": user_audio_item(item.id), "previous_item_id": self.previous_item_id})
        self.previous_item_id = item.id

    def completed(self, item: _Item, transcript: str, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item.id,
            "content_index": 0,
            "transcript": transcript,
            "usage": usage,
        }

    def ms(self, seconds: float) -> int:
        return round((self.offset_s + seconds) * 1000)

    async def on_event(self, generation: int, event: SessionEvent) -> None:
        """A session event as Realtime server events (events of a finalized session included)."""
        if isinstance(event, SessionError):
            await self.session_error(generation, event)
            return
        key = (generation, event.utterance_id)
        vad = self.config.turn_detection is not None
        if isinstance(event, SpeechStarted):
            item = self.items[key] = _Item(new_id("item"))
            self.speaking = key
            if vad:
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": self.ms(event.start),
                        "item_id": item.id,
                    }
                )
        elif isinstance(event, PartialTranscript):
            if key in self.items:  # not an utterance the client cleared an instant ago
                await self.delta(self.items[key], event.stable_text)
        elif isinstance(event, SpeechStopped):
            item = self.items[key]
            self.speaking = None
            if vad and not self.committing:
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": self.ms(event.end),
                        "item_id": item.id,
                    }
                )
            await self.committed(item)
            if generation == self.generation and self.input is not None:
                self.commit_mark = self.session.samples_received
        elif isinstance(event, FinalTranscript):
            await self.final(self.items.pop(key), event)

    async def session_error(self, generation: int, event: SessionError) -> None:
        """An engine error of an utterance fails its item (at its final); any other is an `error`."""
        item = self.items.get((generation, event.utterance_id or 0))
        if item is not None:
            item.failure = event
        else:
            await self.error(ProtocolError(event.code, event.message), None)

    async def delta(self, item: _Item, text: str) -> None:
        """Send what `text` adds to what was sent (in Together's dialect, the whole of `text`, also as
        `transcript`); text that does not continue it waits for the final."""
        if len(text) > len(item.sent) and text.startswith(item.sent):
            delta, item.sent = text[len(item.sent) :], text
            event = {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item.id,
                "content_index": 0,
                "delta": delta,
            }
            if self.config.together:
                event.update(delta=text, transcript=text)
            await self.send(event)

    async def final(self, item: _Item, event: FinalTranscript) -> None:
        if item.failure is not None:
            error = openai_error(item.failure.code, item.failure.message, kind="server_error")
            failed = {"item_id": item.id, "content_index": 0, "error": error}
            await self.send({"type": "conversation.item.input_audio_transcription.failed", **failed})
            return
        if event.text.startswith(item.sent):
            await self.delta(item, event.text)
        else:
            self.core.metrics.realtime_delta_mismatches.inc()
            log.debug("item %s: final %r does not continue the deltas %r", item.id, event.text, item.sent)
        usage = {"type": "duration", "seconds": round(event.end - event.start, 3)}
        await self.send(self.completed(item, event.text, usage))


def parse_event(data: str) -> dict[str, Any] | ProtocolError:
    """A client event, or the `invalid_json` error it is."""
    event = json_object(data)
    return (
        ProtocolError("invalid_json", f"events must be JSON objects; this one {event}")
        if isinstance(event, str)
        else event
    )


def _b64decode_in_slices(audio: str) -> bytearray:
    """`base64.b64decode(audio, validate=True)`, a slice at a time (see `B64_SLICE`)."""
    if audio.find("=", 0, max(0, len(audio) - 2)) >= 0:
        raise binascii.Error("padding before the end")
    # Allocated once at its size, never copied: it is the audio the connection holds while it waits.
    data = bytearray(len(audio) // 4 * 3 - audio.count("=", -2))
    for offset in range(0, len(audio), B64_SLICE):
        part = base64.b64decode(audio[offset : offset + B64_SLICE], validate=True)
        data[offset // 4 * 3 : offset // 4 * 3 + len(part)] = part
    return data


def _refusal(status: int, code: str, message: str, param: str | None = None, **headers: str) -> web.Response:
    """An upgrade refused before it happens: plain HTTP with OpenAI's error object."""
    return web.json_response({"error": openai_error(code, message, param=param)}, status=status, headers=headers)


class RealtimeHandler:
    """aiohttp handler for `/v1/realtime`; `Access` has checked Host, Origin, key and subprotocols before it runs."""

    def __init__(self, core: Core) -> None:
        self.core = core
        settings = core.settings
        self.connections = ConnectionLimit(
            PROTOCOL,
            settings.max_websocket_connections,
            settings.max_connections_per_address,
            total_setting="max_websocket_connections",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        intent = request.query.get("intent", "transcription")
        if intent != "transcription":
            message = f"intent must be transcription (this server only transcribes), got {intent!r}"
            return _refusal(400, "invalid_value", message, "intent")
        try:
            config = from_query(RealtimeConfig.defaults(self.core.settings), request.query)
        except ProtocolError as exc:
            self.core.metrics.errors.labels(exc.code).inc()
            return _refusal(400, exc.code, exc.message, exc.param)
        # aiohttp refuses an uncompressed message as long as its limit: one more lets exactly 24 MiB through
        # `ReadAhead` answers a client's Close at once: what it sent before is for no one
        ws = read_ahead_response(MAX_MESSAGE_BYTES + 1, SUBPROTOCOL)
        if not ws.can_prepare(request).ok:
            message = "this endpoint speaks OpenAI's Realtime API over WebSocket; connect a WebSocket client"
            return _refusal(426, "websocket_required", message, Upgrade="websocket", Connection="Upgrade")
        try:
            with self.connections.opened(request.remote or ""):
                return await self._serve(request, ws, config)
        except TooManyConnections as exc:
            self.core.metrics.errors.labels("too_many_connections").inc()
            return _refusal(503, "too_many_connections", str(exc), **{"Retry-After": "5"})

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, config: RealtimeConfig
    ) -> web.StreamResponse:
        if not await accepted(ws, request):
            return client_gone()
        beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")
        reading = ReadAhead(ws, self.core.settings, request.transport)
        connection = _Connection(ws, self.core, request, beta, reading, config)
        try:
            try:
                await connection.open_session(created=True)
                async with reading as frames:
                    async for frame in frames:
                        if connection.input is not None and connection.input.session.closed:
                            # the server ends it (idle timeout, shutdown): its finals and Close are on their way
                            await connection.release(finalize=True)
                            break
                        if frame.type == WSMsgType.TEXT:
                            event = parse_event(frame.data)
                            del frame  # the text of a big append is not held while its audio waits for room
                            await self._receive(connection, event)
                        elif frame.type == WSMsgType.BINARY:
                            message = "binary frames are not events; send JSON text events"
                            await connection.error(ProtocolError("invalid_value", message), None)
                if ws.exception() is not None:
                    log.info("realtime websocket closed with error: %s", ws.exception())
            except ProtocolError as exc:  # fatal: no session could be opened
                await connection.error(exc, None)
                await connection.close(WSCloseCode.TRY_AGAIN_LATER, exc.code)
        except ConnectionError as exc:  # SlowClient included: the connection is gone already
            log.info("realtime websocket dropped: %s", exc)
        finally:
            await connection.release(finalize=False)
            with contextlib.suppress(ConnectionError):  # when another task is closing, its close ends first
                await connection.close(WSCloseCode.OK, "")
        return ws

    async def _receive(self, connection: _Connection, message: dict[str, Any] | ProtocolError) -> None:
        """One client event; a refused one gets an error event and the session goes on."""
        event_id = None
        try:
            if isinstance(message, ProtocolError):
                raise message
            event_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
            await connection.on_text(message)
        except ProtocolError as exc:
            if exc.fatal:
                raise
            await connection.error(exc, event_id)
