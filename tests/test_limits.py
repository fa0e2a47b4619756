"""Limits that keep Home Assistant served while other clients misbehave: connection caps, timeouts
(header, first message, no speech, writes), the Wyoming reserve, the context cap, running out of
file descriptors.

Real daemon on loopback; well-behaved clients are the real libraries (websockets, wyoming), the
misbehaving ones raw sockets. Loopback is 127.0.0.0/8, so clients of "other addresses" bind
127.0.0.2 and up as their source.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event, async_read_event
from wyoming.ping import Ping

from satellite_asr.audio import Audio
from satellite_asr.clients.stream_client import stream_file
from satellite_asr.clients.transcribe import OfflineTranscriber
from satellite_asr.clients.wav import read_wav
from satellite_asr.clients.wyoming_bench import transcribe_like_home_assistant
from satellite_asr.recording import Recording
from satellite_asr.server import Daemon
from satellite_asr.session import SessionOptions
from tests.doubles import GatedEngineDouble
from tests.helpers import (
    BINARY_OPCODE,
    EXPECTED,
    FIXTURES,
    TEXT_OPCODE,
    client_frame,
    daemon_settings,
    eventually,
    expect_continue_answer,
    fixture_16k,
    free_port,
    of_type,
    read_server_frame,
    read_server_frames_until_close,
    running_daemon,
    same_words,
    upgrade_request,
    websocket_upgrade,
    word_error_rate,
    ws_url,
)

pytestmark = pytest.mark.timeout(180)

WYOMING = "tcp://127.0.0.1:0"
SILENCE_10MS = bytes(160 * 4)
"""10 ms of f32le silence at 16 kHz: a frame that keeps a connection busy without speech."""


async def receive_until_close(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    messages = []
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            messages.append(json.loads(raw))
    return messages


async def read_events_until_eof(reader: asyncio.StreamReader) -> list[Event]:
    """Wyoming events until the daemon closes the connection (a time-out fails the test)."""
    events = []
    while (event := await asyncio.wait_for(async_read_event(reader), 30)) is not None:
        events.append(event)
    return events


def wire(event: Event) -> bytes:
    """An event in Wyoming framing, its data in a data block (so it may exceed a header line)."""
    data = json.dumps(event.data).encode() if event.data else b""
    head: dict[str, Any] = {"type": event.type, "data_length": len(data)}
    if event.payload:
        head["payload_length"] = len(event.payload)
    return json.dumps(head).encode() + b"\n" + data + (event.payload or b"")


@asynccontextmanager
async def raw_connection(
    port: int, *, source: str = "127.0.0.1", receive_buffer: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the daemon (a misbehaving client), closed afterwards."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def write_raw(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def keep_sending(send: Callable[[Any], Awaitable[object]], messages: Iterable[Any], every: float) -> asyncio.Task[None]:
    """A task that sends `messages`, one each `every` seconds, until they run out or the daemon closes
    the connection (a misbehaving client; the test cancels the task)."""

    async def run() -> None:
        with contextlib.suppress(ConnectionClosed, ConnectionError):
            for message in messages:
                await send(message)
                await asyncio.sleep(every)

    return asyncio.create_task(run())


async def write_until_dropped(writer: asyncio.StreamWriter, message: bytes, *, limit_s: float = 60) -> int:
    """Writes `message` again and again without reading, until the daemon drops the connection.

    Returns how many were written; fails if the connection is still open after `limit_s` (the
    daemon is then blocked on this client, which is what a write timeout must prevent).
    """
    written = 0
    async with asyncio.timeout(limit_s):
        try:
            while True:
                writer.write(message)
                await writer.drain()
                written += 1
        except ConnectionError:
            return written


def realtime_url(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}/v1/realtime"


BOUNDARY = "upload-boundary"


async def start_stalled_upload(writer: asyncio.StreamWriter, port: int) -> None:
    """A transcription request whose body stops a few bytes into the file, as a stalled upload does."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\nRIFF"
    ).encode()
    writer.write(
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n".encode()
        + head
    )
    await writer.drain()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of an HTTP response the daemon sends and then closes (a time-out fails the test)."""
    raw = await asyncio.wait_for(reader.read(), 60)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def upload_status(daemon: Daemon, source: str) -> tuple[int, dict[str, Any]]:
    """A whole (tiny) upload from `source`: the status and the error object."""
    form = aiohttp.FormData()
    form.add_field("file", b"not audio", filename="a.wav")
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(f"http://127.0.0.1:{daemon.http_port}/v1/audio/transcriptions", data=form) as response,
    ):
        return response.status, (await response.json())["error"]


async def health_status(daemon: Daemon) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon.http_port}/health", timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status


# --- connection caps ---------------------------------------------------------------------------------


async def refused_beyond_two_per_address_and_three_in_all(
    held: contextlib.AsyncExitStack, url: str
) -> tuple[pytest.ExceptionInfo[InvalidStatus], pytest.ExceptionInfo[InvalidStatus]]:
    """With caps of 2 per address and 3 in all: a third connection from 127.0.0.1 and a fourth from
    127.0.0.3 are refused (what each refusal said). Two connections stay held; the first is closed,
    so one place is free again."""
    first = await held.enter_async_context(websockets.connect(url, local_addr=("127.0.0.1", 0)))
    await held.enter_async_context(websockets.connect(url, local_addr=("127.0.0.1", 0)))
    with pytest.raises(InvalidStatus) as per_address:
        await websockets.connect(url, local_addr=("127.0.0.1", 0))
    await held.enter_async_context(websockets.connect(url, local_addr=("127.0.0.2", 0)))
    with pytest.raises(InvalidStatus) as in_total:
        await websockets.connect(url, local_addr=("127.0.0.3", 0))
    await first.close()
    return per_address, in_total


async def test_websocket_connections_are_capped_per_address_and_in_total() -> None:
    async with (
        running_daemon(max_websocket_connections=3, max_connections_per_address=2) as daemon,
        contextlib.AsyncExitStack() as held,
    ):
        url = ws_url(daemon)
        per_address, in_total = await refused_beyond_two_per_address_and_three_in_all(held, url)
        async with websockets.connect(url, local_addr=("127.0.0.1", 0)) as again:
            await again.send(json.dumps({"type": "config"}))
            created = json.loads(await again.recv())
        health = await health_status(daemon)
    for refused, setting in ((per_address, "max_connections_per_address"), (in_total, "max_websocket_connections")):
        assert refused.value.response.status_code == 503
        body = json.loads(refused.value.response.body or b"{}")
        assert body["code"] == "too_many_connections" and setting in body["message"], body
    assert created["type"] == "session_created", "a closed connection gives its place back"
    assert health == 200, "plain HTTP is not counted against the WebSocket cap"


async def refused_at_once(port: int, source: str) -> tuple[int, dict[str, Any]]:
    """A silent connection the daemon must answer (503) and close without waiting for a request."""
    async with raw_connection(port, source=source) as (reader, _):
        return await read_response(reader)


async def http_describe(port: int) -> str:
    """Home Assistant's Wyoming describe, with the wyoming library's client: the event type answered."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Event("describe"))
        event = await asyncio.wait_for(client.read_event(), 10)
    return event.type if event is not None else "eof"


async def test_silent_http_connections_are_capped_per_address_and_in_total(caplog: pytest.LogCaptureFixture) -> None:
    """Abuse probe: silent TCP connections to the HTTP port were counted by no cap; enough of them
    used up the file descriptors and Wyoming could no longer accept. Each is now counted from accept."""
    async with (
        running_daemon(
            wyoming_uri=WYOMING, max_http_connections=5, max_http_connections_per_address=3, header_timeout_s=120
        ) as daemon,
        contextlib.AsyncExitStack() as held,
    ):
        port = daemon.http_port
        for _ in range(3):
            await held.enter_async_context(raw_connection(port, source="127.0.0.1"))
        per_address = await refused_at_once(port, "127.0.0.1")
        for _ in range(2):
            await held.enter_async_context(raw_connection(port, source="127.0.0.2"))
        in_total = await refused_at_once(port, "127.0.0.3")
        assert daemon.wyoming_port is not None
        described = await http_describe(daemon.wyoming_port)
        await held.aclose()  # the silent connections go: their places come back
        await eventually(lambda: len(daemon.http_connections) == 0, 30)
        health = await health_status(daemon)
        refused = daemon.core.metrics.errors.labels("too_many_connections")._value.get()
    for (status, body), setting in (
        (per_address, "max_http_connections_per_address"),
        (in_total, "max_http_connections"),
    ):
        assert status == 503 and body["code"] == "too_many_connections" and setting in body["message"], body
    assert described == "info"
    assert health == 200
    assert refused == 2
    warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 1 and "1 HTTP connection(s)" in warnings[0], "one warning per 30 s, not one per refusal"


async def test_wyoming_connections_are_capped_per_address_and_in_total() -> None:
    async with (
        running_daemon(wyoming_uri=WYOMING, max_wyoming_connections=3, max_connections_per_address=2) as daemon,
        contextlib.AsyncExitStack() as held,
    ):
        port = daemon.wyoming_port
        assert port is not None
        kept = [await held.enter_async_context(raw_connection(port, source=a)) for a in ("127.0.0.1",) * 2]
        async with raw_connection(port, source="127.0.0.1") as (reader, _):
            per_address = await read_events_until_eof(reader)
        kept.append(await held.enter_async_context(raw_connection(port, source="127.0.0.2")))
        async with raw_connection(port, source="127.0.0.3") as (reader, _):
            in_total = await read_events_until_eof(reader)
        reader, writer = kept[0]
        writer.write(wire(Event("describe")))
        info = await asyncio.wait_for(async_read_event(reader), 30)
    for refused, setting in ((per_address, "max_connections_per_address"), (in_total, "max_wyoming_connections")):
        assert [(e.type, e.data["code"]) for e in refused] == [("error", "server_busy")]
        assert setting in refused[0].data["text"]
    assert info is not None and info.type == "info", "the connections within the caps are served"


async def test_realtime_connections_are_capped_per_address_and_in_total() -> None:
    async with (
        running_daemon(max_websocket_connections=3, max_connections_per_address=2) as daemon,
        contextlib.AsyncExitStack() as held,
    ):
        url = realtime_url(daemon)
        per_address, in_total = await refused_beyond_two_per_address_and_three_in_all(held, url)
        async with websockets.connect(url, local_addr=("127.0.0.1", 0)) as again:
            created = json.loads(await again.recv())
        async with websockets.connect(ws_url(daemon), local_addr=("127.0.0.3", 0)) as stream:
            await stream.send(json.dumps({"type": "config"}))
            stream_created = json.loads(await stream.recv())
    for refused, setting in ((per_address, "max_connections_per_address"), (in_total, "max_websocket_connections")):
        assert refused.value.response.status_code == 503
        error = json.loads(refused.value.response.body or b"{}")["error"]
        assert error["code"] == "too_many_connections" and setting in error["message"], error
    assert created["type"] == "session.created", "a closed connection gives its place back"
    assert stream_created["type"] == "session_created", "/v1/stream has its own count"


async def test_uploads_are_capped_per_address_and_in_total() -> None:
    """Stalled uploads hold their places; others from the same address, or past the total, get 503."""
    async with (
        running_daemon(max_uploads=2, max_uploads_per_address=1, header_timeout_s=120) as daemon,
        contextlib.AsyncExitStack() as held,
    ):
        refusals, expecting = [], []
        for stalled, (source, other) in enumerate((("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.3")), 1):
            _, writer = await held.enter_async_context(raw_connection(daemon.http_port, source=source))
            await start_stalled_upload(writer, daemon.http_port)
            await eventually(lambda n=stalled: len(daemon.uploads.connections) == n)  # its handler is reading the body
            refusals.append(await upload_status(daemon, other))
            expecting.append(await expect_continue_answer(daemon.http_port, source=other))
        per_address, in_total = refusals
        await held.aclose()
        await eventually(lambda: len(daemon.uploads.connections) == 0)
        served = await upload_status(daemon, "127.0.0.1")
    for (status, error), setting in ((per_address, "max_uploads_per_address"), (in_total, "max_uploads")):
        assert status == 503 and error["code"] == "too_many_connections" and setting in error["message"], error
    assert served[0] == 400 and served[1]["code"] == "invalid_file", "a finished upload gives its place back"
    assert expecting == [(503, "too_many_connections")] * 2, "refused before it sends its body"


# --- timeouts ----------------------------------------------------------------------------------------


async def test_a_stalled_upload_is_refused_with_408() -> None:
    async with running_daemon(header_timeout_s=1.0) as daemon:
        async with raw_connection(daemon.http_port) as (reader, writer):
            await start_stalled_upload(writer, daemon.http_port)
            status, body = await read_response(reader)
        health = await health_status(daemon)
    assert status == 408 and body["error"]["code"] == "body_timeout", body
    assert "header_timeout_s" in body["error"]["message"]
    assert health == 200


async def test_an_upload_slower_than_the_minimum_rate_is_refused_with_408() -> None:
    """100 bytes every 0.5 s never stalls for header_timeout_s, yet would hold the only upload slot
    for as long as it trickles: below min_upload_kb_per_s it is cut, and the slot is free again."""
    async with running_daemon(max_uploads=1, header_timeout_s=2.0, min_upload_kb_per_s=1) as daemon:
        async with raw_connection(daemon.http_port) as (reader, writer):
            await start_stalled_upload(writer, daemon.http_port)

            trickling = keep_sending(functools.partial(write_raw, writer), itertools.repeat(bytes(100)), 0.5)
            try:
                status, body = await read_response(reader)
            finally:
                trickling.cancel()
        served = await upload_status(daemon, "127.0.0.1")
    assert status == 408 and body["error"]["code"] == "body_timeout", body
    assert "min_upload_kb_per_s" in body["error"]["message"], body
    assert served[0] == 400 and served[1]["code"] == "invalid_file", "the slot is free again"


async def test_a_slow_http_request_is_closed_after_the_header_timeout() -> None:
    """One byte every 0.3 s of a request that never ends: a slot held forever without a header timeout."""
    async with running_daemon(header_timeout_s=1.0) as daemon:
        async with raw_connection(daemon.http_port) as (reader, writer):
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")

            trickling = keep_sending(functools.partial(write_raw, writer), itertools.repeat(b"X"), 0.3)
            try:
                closed = await asyncio.wait_for(reader.read(), 30)
            finally:
                trickling.cancel()
        async with raw_connection(daemon.http_port) as (silent_reader, _):
            silent = await asyncio.wait_for(silent_reader.read(), 30)
        health = await health_status(daemon)
    assert closed == b"" and silent == b"", "both connections were closed without an answer"
    assert health == 200


async def test_a_websocket_without_config_or_audio_is_closed_after_the_first_message_timeout() -> None:
    async with running_daemon(first_message_timeout_s=1.0) as daemon, websockets.connect(ws_url(daemon)) as ws:
        messages = await asyncio.wait_for(receive_until_close(ws), 30)
        close_code = ws.close_code
    assert [(m["type"], m["code"]) for m in messages] == [("error", "timeout")]
    assert "first_message_timeout_s" in messages[0]["message"]
    assert close_code == 1008


async def test_a_websocket_whose_first_message_is_arriving_at_the_first_message_timeout_gets_as_long_again() -> None:
    """A big first frame still arriving when `first_message_timeout_s` ran out (a slow link, a busy
    machine inflating compressed frames) was closed as idle; the client, still sending, then lost the
    error and the Close to a reset. It has not been idle: once the timeout is past (a connection
    opened after it and sending nothing has been closed), the rest of its frame still opens a session."""
    async with running_daemon(first_message_timeout_s=2.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port)
        frame = client_frame(bytes(64000), opcode=BINARY_OPCODE)  # a second of f32le silence
        writer.write(frame[:1000])
        async with websockets.connect(ws_url(daemon)) as idle:
            idle_messages = await asyncio.wait_for(receive_until_close(idle), 30)
        writer.write(frame[1000:])
        opcode, answer = await read_server_frame(reader)
        writer.close()
    assert [(m["type"], m["code"]) for m in idle_messages] == [("error", "timeout")]
    assert (opcode, json.loads(answer)["type"]) == (TEXT_OPCODE, "session_created"), answer


async def test_a_websocket_whose_first_message_stops_arriving_is_closed_at_twice_the_first_message_timeout() -> None:
    async with running_daemon(first_message_timeout_s=1.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port)
        writer.write(client_frame(bytes(64000), opcode=BINARY_OPCODE)[:1000])  # and nothing more
        frames = await read_server_frames_until_close(reader)
        writer.close()
    error = json.loads(frames[0][1])
    assert (error["code"], frames[-1][1][:2]) == ("timeout", (1008).to_bytes(2, "big")), frames
    assert "within 2 s of connecting (twice first_message_timeout_s: a message was arriving)" in error["message"]


async def test_a_websocket_that_only_pings_gets_no_more_than_the_first_message_timeout() -> None:
    """A ping is a whole frame, not the start of a first message: no extension, and the error
    names the setting, not "a message was arriving"."""
    async with (
        running_daemon(first_message_timeout_s=2.0) as daemon,
        websockets.connect(ws_url(daemon), ping_interval=None) as ws,
    ):
        await asyncio.wait_for(await ws.ping(), 30)  # the pong: the ping came and was answered
        messages = await asyncio.wait_for(receive_until_close(ws), 30)
    assert [(m["type"], m["code"]) for m in messages] == [("error", "timeout")]
    assert messages[0]["message"].endswith("within 2 s of connecting (first_message_timeout_s)"), messages


async def test_messages_that_open_no_session_do_not_keep_a_websocket_open() -> None:
    async with running_daemon(first_message_timeout_s=1.0) as daemon, websockets.connect(ws_url(daemon)) as ws:
        flushing = keep_sending(ws.send, itertools.repeat(json.dumps({"type": "flush"})), 0.3)
        try:
            messages = await asyncio.wait_for(receive_until_close(ws), 30)
        finally:
            flushing.cancel()
        close_code = ws.close_code
    assert [(m["type"], m["code"]) for m in messages] == [("error", "timeout")]
    assert close_code == 1008


async def test_a_wyoming_connection_that_sends_nothing_or_trickles_is_closed() -> None:
    async with running_daemon(wyoming_uri=WYOMING, first_message_timeout_s=1.0) as daemon:
        port = daemon.wyoming_port
        assert port is not None
        async with raw_connection(port) as (reader, _):
            silent = await read_events_until_eof(reader)
        async with raw_connection(port) as (reader, writer):
            one_byte_at_a_time = (bytes([byte]) for byte in b'{"type": "describe"}')
            trickling = keep_sending(functools.partial(write_raw, writer), one_byte_at_a_time, 0.3)
            trickled = await read_events_until_eof(reader)
            trickling.cancel()
    for events in (silent, trickled):
        assert [(e.type, e.data["code"]) for e in events] == [("error", "timeout")]


async def test_a_wyoming_connection_idling_after_its_answer_is_closed() -> None:
    """The round is answered and its session released: the connection holds nothing the reaper sees."""
    async with running_daemon(wyoming_uri=WYOMING, first_message_timeout_s=1.0) as daemon:
        assert daemon.wyoming_port is not None
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            result = await transcribe_like_home_assistant(client, read_wav(FIXTURES / "lights_on.wav"), realtime=False)
            after: list[Event] = []
            while (event := await asyncio.wait_for(client.read_event(), 30)) is not None:
                after.append(event)
    assert result.text, "the round was answered"
    assert [(e.type, e.data.get("code")) for e in after if e.type == "error"] == [("error", "timeout")]


async def test_a_websocket_client_that_does_not_read_is_dropped() -> None:
    """Each unknown message type is answered with an error; the client never reads them."""
    message = client_frame(json.dumps({"type": "x" * 2000}).encode())
    async with running_daemon(write_timeout_s=1.0) as daemon:
        async with raw_connection(daemon.http_port, receive_buffer=4096) as (reader, writer):
            response = await websocket_upgrade(reader, writer, daemon.http_port)
            assert response.startswith(b"HTTP/1.1 101")
            written = await write_until_dropped(writer, message)
        during = await health_status(daemon)
        async with websockets.connect(ws_url(daemon)) as ws:
            await ws.send(json.dumps({"type": "config"}))
            created = json.loads(await ws.recv())
    assert written > 100, "the daemon answered until the client's buffers were full"
    assert during == 200 and created["type"] == "session_created", "the daemon went on serving others"


async def test_a_realtime_client_that_does_not_read_is_dropped() -> None:
    """Each unknown event type is answered with an error event; the client never reads them."""
    message = client_frame(json.dumps({"type": "x" * 2000}).encode())
    async with running_daemon(write_timeout_s=1.0) as daemon:
        async with raw_connection(daemon.http_port, receive_buffer=4096) as (reader, writer):
            response = await websocket_upgrade(reader, writer, daemon.http_port, "/v1/realtime")
            assert response.startswith(b"HTTP/1.1 101")
            written = await write_until_dropped(writer, message)
        await eventually(lambda: len(daemon.core.sessions) == 0)  # the dropped client's session is released
        async with websockets.connect(realtime_url(daemon)) as ws:
            created = json.loads(await ws.recv())
    assert written > 100, "the daemon answered until the client's buffers were full"
    assert created["type"] == "session.created", "the daemon went on serving others"


async def test_a_realtime_client_that_does_not_read_does_not_hold_up_shutdown() -> None:
    """Its error events fill the buffers until the daemon stops reading; shutdown still ends."""
    message = client_frame(json.dumps({"type": "x" * 2000}).encode())
    daemon = Daemon(daemon_settings(write_timeout_s=1.0))
    await daemon.start()
    stopped = False
    try:
        await daemon.core.wait_ready()
        async with raw_connection(daemon.http_port, receive_buffer=4096) as (reader, writer):
            await websocket_upgrade(reader, writer, daemon.http_port, "/v1/realtime")
            with contextlib.suppress(TimeoutError, ConnectionError):
                while True:
                    writer.write(message)
                    await asyncio.wait_for(writer.drain(), 2)
            await asyncio.wait_for(daemon.stop(), 60)
            stopped = True
    finally:
        if not stopped:
            await daemon.stop()
    assert len(daemon.core.sessions) == 0


async def test_a_wyoming_client_that_does_not_read_is_dropped() -> None:
    """Each ping carries 60 kB that its pong echoes; the client never reads the pongs."""
    ping = wire(Event("ping", {"text": "p" * 60_000}))
    async with running_daemon(wyoming_uri=WYOMING, write_timeout_s=1.0) as daemon:
        assert daemon.wyoming_port is not None
        async with raw_connection(daemon.wyoming_port, receive_buffer=4096) as (_, writer):
            written = await write_until_dropped(writer, ping)
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            result = await transcribe_like_home_assistant(client, read_wav(FIXTURES / "lights_on.wav"), realtime=False)
    assert written > 10
    assert result.text is not None and word_error_rate(EXPECTED["lights_on.wav"][0], result.text) <= 0.25


# --- malformed HTTP ----------------------------------------------------------------------------------

MALFORMED_REQUESTS = (
    b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Control: \x00\x01\r\n\r\n",
)
"""Requests aiohttp cannot parse: a chunk size that is not hex, a body encoding it cannot decode,
control characters in a header."""


async def test_a_malformed_http_request_is_refused_with_one_debug_line_not_an_error_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any client on the LAN can send these as often as it likes: each is answered 400 by aiohttp,
    and an ERROR with a traceback for each would flood the log with the client's faults."""
    caplog.set_level(logging.DEBUG)
    async with running_daemon() as daemon:
        statuses = []
        for request in MALFORMED_REQUESTS:
            async with raw_connection(daemon.http_port) as (reader, writer):
                writer.write(request)
                head = await asyncio.wait_for(reader.read(), 60)
                statuses.append(int(head.split()[1]))
        health = await health_status(daemon)
    assert statuses == [400] * len(MALFORMED_REQUESTS)
    assert health == 200
    http_records = [r for r in caplog.records if r.name.startswith(("aiohttp", "satellite_asr.server"))]
    assert not [r.getMessage() for r in http_records if r.levelno >= logging.WARNING or r.exc_info]
    refused = [r.getMessage() for r in http_records if "Error handling request from 127.0.0.1" in r.getMessage()]
    assert len(refused) == len(MALFORMED_REQUESTS), refused
    assert "chunk size" in refused[0] and "brotli" in refused[1], refused


@pytest.mark.parametrize("path", ["/v1/stream", "/v1/realtime"])
async def test_a_client_gone_before_its_upgrade_is_answered_is_no_error_in_the_log(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that half-closes as soon as its upgrade request is sent (one cancelled while it
    connects) is gone before the 101: aiohttp closes the transport at the half-close, and the write
    of the 101 failed in the handler, which aiohttp logged as an ERROR with a traceback, each time.
    Found by fuzzing with clients that vanish at random moments."""
    caplog.set_level(logging.DEBUG)
    async with running_daemon() as daemon:
        for _ in range(5):
            async with raw_connection(daemon.http_port) as (reader, writer):
                writer.write(upgrade_request(daemon.http_port, path))
                writer.write_eof()
                await asyncio.wait_for(reader.read(), 60)
        health = await health_status(daemon)
        sessions = len(daemon.core.sessions)
    assert (health, sessions) == (200, 0)
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not failures, failures


def upload_request(body: bytes, *headers: str) -> bytes:
    head = [
        "POST /v1/audio/transcriptions HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


MALFORMED_UPLOADS = {
    "a part header without a colon": (
        upload_request(f"--{BOUNDARY}\r\nno colon here\r\n\r\nxx\r\n--{BOUNDARY}--\r\n".encode()),
        "Invalid HTTP header",
    ),
    "a part header line over 8190 bytes": (
        upload_request(f"--{BOUNDARY}\r\nX-Long: {'a' * 9000}\r\n\r\nxx\r\n--{BOUNDARY}--\r\n".encode()),
        "8190 bytes",
    ),
    "a gzip body that is not gzip": (upload_request(b"x" * 2000, "Content-Encoding: gzip"), "gzip"),
}
"""Uploads whose headers parse but whose form or body does not (abuse probe: the first two got a
plain-text 500, the third an ERROR with three tracebacks when aiohttp read what was left of it)."""


async def test_a_malformed_upload_body_is_a_json_400_and_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = {}
    async with running_daemon() as daemon:
        for case, (request, _) in MALFORMED_UPLOADS.items():
            async with raw_connection(daemon.http_port) as (reader, writer):
                writer.write(request)
                answers[case] = await read_response(reader)
        await eventually(lambda: len(daemon.uploads.connections) == 0, 30)
        health = await health_status(daemon)
    for case, (status, body) in answers.items():
        error = body["error"]
        assert status == 400 and error["code"] == "invalid_request", (case, body)
        assert MALFORMED_UPLOADS[case][1] in error["message"] and len(error["message"]) < 400, (case, error)
    assert health == 200
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "satellite_asr"))]
    assert not [r.getMessage() for r in records if r.levelno >= logging.WARNING or r.exc_info]


# --- idle means no speech --------------------------------------------------------------------------


async def test_a_websocket_session_sending_only_silence_is_closed_as_idle() -> None:
    """10 ms of silence every 0.2 s: frames keep coming, speech never does."""
    async with running_daemon(idle_timeout_s=1.0) as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config"}))

        trickling = keep_sending(ws.send, itertools.repeat(SILENCE_10MS), 0.2)
        messages = await asyncio.wait_for(receive_until_close(ws), 30)
        trickling.cancel()
        close = ws.close_code, ws.close_reason
        assert len(daemon.core.sessions) == 0
    assert [m["type"] for m in messages] == ["session_created"]
    assert close == (1001, "idle_timeout")


async def test_audio_waiting_on_a_busy_engine_is_not_quiet() -> None:
    """Review (helper-119 brief): under load, sessions were closed as idle with speech still waiting
    to be heard. Two commands sent at once; the first one's final waits for the engine (its gate
    shut, as a busy engine would keep it), so the second waits unread (back-pressure,
    `max_pending_finals` 1) for three idle timeouts: the session stays open, both finals come once
    the engine is free, and only then does the client's silence close it."""
    engine = GatedEngineDouble()
    gap = np.zeros(24000, dtype=np.float32)  # 1.5 s: each command ends at its silence
    speech = np.concatenate([fixture_16k("lights_on.wav"), gap, fixture_16k("weather.wav"), gap]).astype("<f4")
    async with (
        running_daemon(engine, idle_timeout_s=1.0, max_pending_finals=1) as daemon,
        websockets.connect(ws_url(daemon)) as ws,
    ):
        for at in range(0, speech.size, 16000):
            await ws.send(speech[at : at + 16000].tobytes())
        await eventually(lambda: len(daemon.core.sessions) == 1, 30)
        (session,) = daemon.core.sessions.open_sessions()
        await eventually(lambda: session.pending_finals == 1, 30)
        await asyncio.sleep(3.0)
        assert not session.closed, "not closed as idle while its audio waited on the engine"
        engine.gate.set()
        messages = await asyncio.wait_for(receive_until_close(ws), 60)
        close = ws.close_code, ws.close_reason
    finals = [m["text"] for m in of_type(messages, "final")]
    assert same_words(EXPECTED["lights_on.wav"] + EXPECTED["weather.wav"], finals), finals
    assert close == (1001, "idle_timeout")


async def test_a_recording_whose_reading_stalls_in_a_silence_is_not_closed_as_idle() -> None:
    """`satellite-asr transcribe` of a recording with a long silence ended in a traceback, "the
    server ended the transcription (idle_timeout)", once reading the silence took longer than
    idle_timeout_s (10 minutes of it take 3 s here): a recording is read by the daemon itself, as
    fast as it goes, so its caller owns its lifetime, as an upload's does. Here the reading stalls
    (a slow disk, a double of the file's decoder) for over twice the timeout, inside a silence."""

    async def stalling_read() -> AsyncIterator[Audio]:
        yield np.zeros(16000, dtype=np.float32)
        await asyncio.sleep(2.5)
        yield fixture_16k("weather.wav")

    async with OfflineTranscriber(daemon_settings(idle_timeout_s=1.0)) as transcriber:
        options = SessionOptions.from_settings(transcriber.core.settings, partials=False, language="en")
        async with Recording(transcriber.core, "offline", options) as recording:
            finals = [final.text async for final in recording.finals(stalling_read())]
    assert same_words(EXPECTED["weather.wav"], finals), finals


async def test_speech_keeps_a_session_open_across_pauses() -> None:
    """Real-time speech with pauses between commands outlasts an idle timeout shorter than the file."""
    async with running_daemon(idle_timeout_s=3.0) as daemon:
        messages = await stream_file(FIXTURES / "three_commands.wav", ws_url(daemon))
    finals = of_type(messages, "final")
    assert same_words(EXPECTED["three_commands.wav"], [f["text"] for f in finals]), finals
    assert all(f["is_speech_final"] for f in finals), "each ended at its pause, none by an idle close"


async def test_speech_the_vad_has_not_yet_confirmed_is_not_quiet() -> None:
    """Review (Telnyx brief): LiveKit's Telnyx stream with `idle_timeout_s` 2 had a command cut in
    two by an idle close. The idle clock counted arriving audio as speech only once the endpointer
    confirmed an utterance (`min_speech_ms`), so the first 300 ms of a command that began just
    before the timeout were quiet: the close landed in the word, its start went to one connection
    and the rest to the next. A session already quiet for 1000 s (`quiet_s`) is fed a command in
    32 ms pieces: while speech is heard but not yet confirmed, the session is not quiet."""
    async with running_daemon(idle_timeout_s=60) as daemon:
        sessions = daemon.core.sessions

        async def nothing(*_: object) -> None:
            return None

        session = sessions.create(
            "websocket",
            SessionOptions.from_settings(daemon.core.settings, language="en"),
            nothing,
            nothing,
            quiet_s=1000,
        )
        try:
            quiet_before_start = []
            audio = fixture_16k("lights_on.wav")
            for at in range(0, audio.size, 512):
                await session.feed(audio[at : at + 512])
                if session.in_utterance:
                    break
                quiet_before_start.append(session.quiet_seconds(time.monotonic()))
        finally:
            await sessions.release(session, "done", finalize=False)
    assert session.utterances == 1, "the command was heard"
    onset = quiet_before_start[-5:]  # 160 ms of the 300 ms of speech an utterance needs to begin
    assert all(quiet < 60 for quiet in onset), onset


async def test_a_wyoming_round_of_only_silence_is_answered_and_closed_as_idle() -> None:
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(320)).event()
    async with running_daemon(wyoming_uri=WYOMING, idle_timeout_s=1.0) as daemon:
        assert daemon.wyoming_port is not None
        async with raw_connection(daemon.wyoming_port) as (reader, writer):
            writer.write(wire(Transcribe(language="en").event()) + wire(AudioStart(16000, 2, 1).event()))

            trickling = keep_sending(functools.partial(write_raw, writer), itertools.repeat(wire(chunk)), 0.2)
            events = await read_events_until_eof(reader)
            trickling.cancel()
    assert [e.type for e in events] == ["transcript-start", "transcript", "transcript-stop"]
    assert events[1].data["text"] == ""


async def test_reconfiguring_a_websocket_session_without_speaking_does_not_reset_its_idle_clock() -> None:
    """Abuse probe: a `config` every few seconds opened a new session whose idle clock began anew,
    so a client that never spoke held its slot for ever."""
    async with running_daemon(idle_timeout_s=1.0) as daemon, websockets.connect(ws_url(daemon)) as ws:
        reconfiguring = keep_sending(ws.send, itertools.repeat(json.dumps({"type": "config"})), 0.3)
        messages = await asyncio.wait_for(receive_until_close(ws), 30)
        reconfiguring.cancel()
        close = ws.close_code, ws.close_reason
        assert len(daemon.core.sessions) == 0
    assert len(of_type(messages, "session_created")) > 1
    assert close == (1001, "idle_timeout")


async def test_realtime_session_updates_without_speech_do_not_reset_its_idle_clock() -> None:
    """The same dodge by `session.update`s that each open a new session (the turn detection changes:
    a change of what is decoded with alone keeps the session)."""
    url = "ws://127.0.0.1:{}/v1/realtime?intent=transcription"
    async with running_daemon(idle_timeout_s=1.0) as daemon, websockets.connect(url.format(daemon.http_port)) as ws:

        def update(silence_ms: int) -> str:
            turn_detection = {"type": "server_vad", "silence_duration_ms": silence_ms}
            return json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "transcription", "audio": {"input": {"turn_detection": turn_detection}}},
                }
            )

        updates = map(update, itertools.cycle((500, 600)))
        updating = keep_sending(ws.send, updates, 0.3)
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(30):
                events = [json.loads(raw) async for raw in ws]
        updating.cancel()
        close = ws.close_code, ws.close_reason
        assert len(daemon.core.sessions) == 0
    updates = [e["session"]["id"] for e in events if e["type"] == "session.updated"]
    assert len(set(updates)) > 1, events
    assert close == (1001, "idle_timeout")


async def test_wyoming_rounds_of_silence_one_after_another_end_at_the_idle_timeout() -> None:
    """A `transcribe` every 0.3 s ends the round before it (answered, empty) and opens another:
    rounds of silence take over the quiet of the one before, so the connection is closed."""
    async with running_daemon(wyoming_uri=WYOMING, idle_timeout_s=1.0) as daemon:
        assert daemon.wyoming_port is not None
        async with raw_connection(daemon.wyoming_port) as (reader, writer):
            transcribes = itertools.repeat(wire(Transcribe(language="en").event()))
            transcribing = keep_sending(functools.partial(write_raw, writer), transcribes, 0.3)
            events = await read_events_until_eof(reader)
            transcribing.cancel()
        assert len(daemon.core.sessions) == 0
    assert [e.type for e in events].count("transcript") > 1


async def test_time_between_wyoming_rounds_is_not_quiet_a_round_holds() -> None:
    """Only a round's own quiet carries over: a connection that waits between rounds (pinging) is
    not idle, and its next round is heard whole."""
    async with running_daemon(wyoming_uri=WYOMING, idle_timeout_s=2.0) as daemon:
        assert daemon.wyoming_port is not None
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            silence = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(16000))  # 0.5 s
            for event in (Transcribe(language="en"), AudioStart(16000, 2, 1), silence, AudioStop()):
                await client.write_event(event.event())
            while (event := await asyncio.wait_for(client.read_event(), 30)) is not None:
                if event.type == "transcript-stop":
                    break
            for _ in range(3):  # 3 s between the rounds, more than the idle timeout
                await asyncio.sleep(1.0)
                await client.write_event(Ping().event())
            result = await transcribe_like_home_assistant(client, read_wav(FIXTURES / "lights_on.wav"), realtime=False)
    assert result.text is not None and word_error_rate(EXPECTED["lights_on.wav"][0], result.text) <= 0.25


async def test_time_after_a_wyoming_round_answered_by_its_final_is_not_quiet_either() -> None:
    """A round its final answered (no `audio-stop`) ends only when the next begins: its quiet is
    taken when it is answered, not then, or the next round would start already idle."""
    pcm = read_wav(FIXTURES / "lights_on.wav").pcm
    silence = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(32000))  # 1 s
    async with running_daemon(wyoming_uri=WYOMING, idle_timeout_s=4.0) as daemon:
        assert daemon.wyoming_port is not None
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            texts = []
            for _ in range(2):
                for event in (Transcribe(language="en"), AudioStart(16000, 2, 1), silence):
                    await client.write_event(event.event())
                await asyncio.sleep(1.0)  # a second of silence as a microphone sends it
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
                await client.write_event(silence.event())
                while (event := await asyncio.wait_for(client.read_event(), 30)) is not None:
                    if event.type == "transcript":
                        texts.append(event.data["text"])
                    if event.type == "transcript-stop":
                        break
                for _ in range(5):  # 5 s between the rounds, more than the idle timeout
                    await asyncio.sleep(1.0)
                    await client.write_event(Ping().event())
    assert len(texts) == 2 and all(word_error_rate(EXPECTED["lights_on.wav"][0], t) <= 0.25 for t in texts), texts


async def test_a_wyoming_client_that_half_closes_after_audio_stop_while_held_back_gets_its_transcript() -> None:
    """Sending a file, `audio-stop` and then a shutdown of the sending side (`nc -N`) is a whole
    request: the FIN seen while the round is held back must not end it as a disconnect."""
    wav = read_wav(FIXTURES / "lights_on.wav")
    async with running_daemon(wyoming_uri=WYOMING, max_feed_ahead_s=1.0) as daemon:
        assert daemon.wyoming_port is not None
        async with raw_connection(daemon.wyoming_port) as (reader, writer):
            writer.write(wire(AudioStart(wav.sample_rate, 2, wav.channels).event()))
            writer.write(wire(AudioChunk(wav.sample_rate, 2, wav.channels, wav.pcm).event()))
            writer.write(wire(AudioStop().event()))
            await writer.drain()
            writer.write_eof()
            events = await read_events_until_eof(reader)
    (transcript,) = [e.data["text"] for e in events if e.type == "transcript"]
    assert word_error_rate(EXPECTED["lights_on.wav"][0], transcript) <= 0.25


# --- Home Assistant keeps its share -----------------------------------------------------------------


async def test_websocket_clients_cannot_take_the_slots_kept_for_home_assistant() -> None:
    """The issue's attack at small scale: WebSocket clients try to take every session slot."""
    max_sessions = 6
    async with (
        running_daemon(wyoming_uri=WYOMING, max_sessions=max_sessions) as daemon,
        contextlib.AsyncExitStack() as held,
    ):
        answers = []
        for _ in range(max_sessions):
            ws = await held.enter_async_context(websockets.connect(ws_url(daemon)))
            await ws.send(json.dumps({"type": "config"}))
            answers.append(json.loads(await ws.recv()))
        assert daemon.wyoming_port is not None
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            wav = read_wav(FIXTURES / "lights_on.wav")
            result = await transcribe_like_home_assistant(client, wav, realtime=False)
    reserved = daemon.settings.wyoming_reserved_sessions
    assert [a["type"] for a in answers].count("session_created") == max_sessions - reserved
    busy = [a for a in answers if a["type"] == "error"]
    assert {a["code"] for a in busy} == {"server_busy"} and "wyoming_reserved_sessions" in busy[0]["message"]
    assert result.text is not None and word_error_rate(EXPECTED["lights_on.wav"][0], result.text) <= 0.25


# --- context length ----------------------------------------------------------------------------------


async def test_a_websocket_context_over_the_cap_is_invalid_config() -> None:
    async with running_daemon(max_context_chars=100) as daemon:
        async with websockets.connect(ws_url(daemon)) as ws:
            await ws.send(json.dumps({"type": "config", "context": "x" * 101}))
            refused = await receive_until_close(ws)
            code = ws.close_code
        async with websockets.connect(ws_url(daemon)) as ws:
            await ws.send(json.dumps({"type": "config", "context": "x" * 100}))
            accepted = json.loads(await ws.recv())
    assert [(m["type"], m["code"]) for m in refused] == [("error", "invalid_config")]
    assert "max_context_chars" in refused[0]["message"] and code == 1008
    assert accepted["type"] == "session_created" and accepted["config"]["context"] == "x" * 100


async def test_a_wyoming_context_over_the_cap_is_an_error_and_the_round_still_answers() -> None:
    wav = read_wav(FIXTURES / "lights_on.wav")
    async with running_daemon(wyoming_uri=WYOMING, max_context_chars=100) as daemon:
        assert daemon.wyoming_port is not None
        async with raw_connection(daemon.wyoming_port) as (reader, writer):
            context = {"names": "bedroom " * 50}
            writer.write(wire(Transcribe(language="en", context=context).event()))
            writer.write(wire(AudioStart(wav.sample_rate, 2, wav.channels).event()))
            writer.write(wire(AudioChunk(wav.sample_rate, 2, wav.channels, wav.pcm).event()))
            writer.write(wire(Event("audio-stop")))
            events = []
            while not events or events[-1].type != "transcript-stop":
                event = await asyncio.wait_for(async_read_event(reader), 30)
                assert event is not None
                events.append(event)
    errors = [e.data for e in events if e.type == "error"]
    assert [e["code"] for e in errors] == ["context_too_long"] and "max_context_chars" in errors[0]["text"]
    (transcript,) = [e.data["text"] for e in events if e.type == "transcript"]
    assert word_error_rate(EXPECTED["lights_on.wav"][0], transcript) <= 0.25


# --- out of file descriptors --------------------------------------------------------------------------


async def until_healthy(port: int) -> None:
    """Waits (up to a minute) for a daemon started in a subprocess to answer /health with 200."""
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)


DAEMON_WITH_FEW_FILES = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
sys.argv = ["satellite-asr", *sys.argv[1:]]
runpy.run_module("satellite_asr", run_name="__main__")
"""
"""`satellite-asr` in a process that may open 64 files (its own few plus ~50 connections)."""


async def test_running_out_of_file_descriptors_logs_a_few_lines_and_the_daemon_recovers(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-c", DAEMON_WITH_FEW_FILES, "serve", "--host", "127.0.0.1"]
    command += ["--http-port", str(port), "--wyoming-uri", "none", "--no-zeroconf", "--log-level", "INFO"]
    log_file = tmp_path / "daemon.log"
    with log_file.open("wb") as stderr:  # a file, not a pipe: a log storm must not block the daemon on a full pipe
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        await until_healthy(port)
        async with aiohttp.ClientSession() as http:
            async with contextlib.AsyncExitStack() as held:
                for _ in range(110):  # more than the daemon can accept, fewer than its listen backlog
                    await held.enter_async_context(raw_connection(port))
                await asyncio.sleep(3)  # asyncio retries the failed accept every second
            statuses = []
            for _ in range(100):  # the connections are closed; the daemon accepts again
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    timeout = aiohttp.ClientTimeout(total=5)
                    async with http.get(f"http://127.0.0.1:{port}/health", timeout=timeout) as response:
                        statuses.append(response.status)
                        break
                await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    log = log_file.read_text(errors="replace")
    about_accept = [line for line in log.splitlines() if "accept" in line.lower()]
    assert statuses == [200], log[-3000:]
    assert 1 <= len(about_accept) <= 3, about_accept[:10]
    assert "Too many open files" in about_accept[0], "the warning says what went wrong"
    assert process.returncode == 0


DAEMON_WITH_100_FILES = DAEMON_WITH_FEW_FILES.replace("(64, 64)", "(100, 100)")


async def test_a_flood_of_silent_http_connections_leaves_wyoming_answering() -> None:
    """The probe's attack at small scale: a daemon that may open 100 files gets 150 silent HTTP
    connections; with the HTTP cap below its file limit Home Assistant's describe is still answered."""
    http_port, wyoming_port = free_port(), free_port()
    command = [sys.executable, "-c", DAEMON_WITH_100_FILES, "serve", "--host", "127.0.0.1", "--no-zeroconf"]
    command += ["--http-port", str(http_port), "--wyoming-uri", f"tcp://127.0.0.1:{wyoming_port}"]
    command += [
        "--max-http-connections",
        "40",
        "--max-http-connections-per-address",
        "200",
        "--header-timeout-s",
        "120",
    ]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await until_healthy(http_port)
        async with contextlib.AsyncExitStack() as held:
            for _ in range(150):
                await held.enter_async_context(raw_connection(http_port))
            described = await http_describe(wyoming_port)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    assert described == "info"


ACCEPT_RETRIES_AFTER_CLOSE = """
import asyncio, logging, resource, socket, sys
from satellite_asr.limits import AcceptErrorLog
logging.basicConfig(level=logging.INFO)

async def main():
    handler = AcceptErrorLog()
    handler.install(asyncio.get_running_loop())
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = []
    for _ in range(30):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        clients.append(client)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20, hard))  # fewer than are open: every accept fails
    await asyncio.sleep(0.3)
    server.close()  # the daemon stopping: asyncio's accept retries are still pending
    if "uninstall" in sys.argv:  # as `Daemon.stop` does last; the loop runs on (asyncio.run's teardown)
        handler.uninstall()
    await asyncio.sleep(1.5)
    print("done")

asyncio.run(main())
"""
"""A listening socket that runs out of file descriptors and is closed while asyncio's retries of
`accept()` are pending (a loop of 30 connections over a limit of 20), with the daemon's handler;
with `uninstall`, the handler is uninstalled at once, as the daemon's stop ends."""


@pytest.mark.parametrize("uninstall", [False, True], ids=["installed", "uninstalled"])
async def test_accept_retries_after_the_socket_closed_log_no_traceback(uninstall: bool) -> None:
    """Also when the daemon's stop has uninstalled the handler before the retries come (the loop
    runs on in asyncio.run's teardown): a quick stop logged up to a hundred tracebacks then."""
    flags = ["uninstall"] if uninstall else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ACCEPT_RETRIES_AFTER_CLOSE, *flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    log = stderr.decode(errors="replace")
    assert stdout.decode().strip() == "done", log[-3000:]
    assert "Too many open files" in log, log[-3000:]
    assert "Traceback" not in log and "Invalid file descriptor" not in log, log[-3000:]
