"""Shutdown within `shutdown_timeout_s`, whatever clients do: a real `satellite-asr serve` process,
SIGTERM, and clients that idle, that are mid-utterance, and that never read what they are sent; and
clients that send audio far faster than real time (`Daemon.stop`, what SIGTERM runs)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sys
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from satellite_asr.clients.wav import read_wav
from satellite_asr.server import Daemon
from tests.doubles import GatedEngineDouble
from tests.helpers import FIXTURES, client_frame, daemon_settings, eventually, fixture_16k, free_port, of_type

SHUTDOWN_TIMEOUT_S = 10.0
"""The default `shutdown_timeout_s`: the daemon is started without the setting."""
pytestmark = pytest.mark.timeout(180)


async def start_daemon(http_port: int, wyoming_port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "satellite_asr",
        "serve",
        "--host=127.0.0.1",
        f"--http-port={http_port}",
        f"--wyoming-uri=tcp://127.0.0.1:{wyoming_port}",
        "--no-zeroconf",
        "--log-level=INFO",
        "--websocket-read-ahead-mb=1",  # a deaf client's frames fill it at once: the daemon is stuck writing to it
        stderr=asyncio.subprocess.PIPE,
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(600):  # the bound only turns a daemon that never starts into a failure
            if process.returncode is not None:
                assert process.stderr is not None
                error = (await process.stderr.read()).decode(errors="replace")
                raise AssertionError(f"the daemon exited ({process.returncode}) as it started:\n{error}")
            try:
                async with http.get(f"http://127.0.0.1:{http_port}/health") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("the daemon did not become ready")


def never_reading_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer that the test never reads from."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def upgrade_to_websocket(sock: socket.socket, port: int) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: nothing after the handshake is read
    assert b" 101 " in response.split(b"\r\n")[0], response


async def send_until_server_stops_reading(sock: socket.socket, data: bytes) -> None:
    """Send requests whose answers the test never reads, until the server stops taking more
    (it is then stuck writing to this client); gives up after a bound, the test goes on anyway."""
    sock.setblocking(False)
    blocked = 0
    for _ in range(2000):
        try:
            sock.send(data)
            blocked = 0
        except BlockingIOError:
            blocked += 1
            if blocked == 10:
                return
            await asyncio.sleep(0.1)


async def read_until_closed(ws: websockets.ClientConnection, messages: list[dict[str, Any]]) -> None:
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except ConnectionClosed:
        pass


async def test_sigterm_ends_every_connection_sends_pending_finals_and_exits_0() -> None:
    http_port, wyoming_port = free_port(), free_port()
    process = await start_daemon(http_port, wyoming_port)
    assert process.stderr is not None
    stderr = asyncio.create_task(process.stderr.read())
    url = f"ws://127.0.0.1:{http_port}/v1/stream"
    try:
        idle = await websockets.connect(url)  # no session: aiohttp alone would hold shutdown ~47 s
        idle_messages: list[dict[str, Any]] = []
        idle_reader = asyncio.create_task(read_until_closed(idle, idle_messages))

        speaking = await websockets.connect(url)
        speaking_messages: list[dict[str, Any]] = []
        speaking_reader = asyncio.create_task(read_until_closed(speaking, speaking_messages))
        command = read_wav(FIXTURES / "lights_on.wav").to_16k_mono()[: int(2.5 * 16000)]  # still speaking
        await speaking.send(command.astype(np.float32).astype("<f4").tobytes())
        for _ in range(600):
            if any(m["type"] == "speech_start" for m in speaking_messages):
                break
            await asyncio.sleep(0.05)

        deaf_websocket = never_reading_socket(http_port)
        upgrade_to_websocket(deaf_websocket, http_port)
        await send_until_server_stops_reading(deaf_websocket, client_frame(b'{"type": "nonsense"}') * 200)
        deaf_wyoming = never_reading_socket(wyoming_port)
        await send_until_server_stops_reading(deaf_wyoming, b'{"type": "describe"}\n' * 2000)
        wyoming_reader, wyoming_writer = await asyncio.open_connection("127.0.0.1", wyoming_port)

        process.send_signal(signal.SIGTERM)
        # Not a speed check: the bound plus a generous margin, so that a hang fails instead of waiting.
        code = await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT_S + 60)
        await asyncio.wait_for(asyncio.gather(idle_reader, speaking_reader), 10)
        wyoming_eof = await asyncio.wait_for(wyoming_reader.read(), 10)
        wyoming_writer.close()
        deaf_websocket.close()
        deaf_wyoming.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (await stderr).decode()
    assert code == 0, log[-3000:]
    assert idle.close_code == 1001, "going away"
    assert [m["type"] for m in speaking_messages].count("final") == 1, "the utterance in progress got its final"
    assert speaking.close_code == 1001
    assert wyoming_eof == b"", "end of stream"
    assert "Traceback" not in log, log[-3000:]


async def test_shutdown_beside_clients_flooding_audio_sends_every_final_then_1001() -> None:
    """Three clients send a minute of speech each at once, then `end`; the daemon has read it all
    ahead and holds them back. At shutdown each session takes no more of it: every utterance it
    started gets its final, then the Close is 1001. The handler used to race through the audio read
    ahead (a closed session took it as nothing), reach the `end` and close with 1000 while the
    shutdown still waited for finals, which were then dropped."""
    speech = np.concatenate(
        [fixture_16k(name) for name in ("three_commands.wav", "lights_on.wav", "weather.wav", "timer.wav")] * 3
    )
    frames = [speech[at : at + 16000].astype("<f4").tobytes() for at in range(0, speech.size, 16000)]
    daemon = Daemon(daemon_settings())
    await daemon.start()
    try:
        await daemon.core.wait_ready()
        url = f"ws://127.0.0.1:{daemon.http_port}/v1/stream"
        clients = [await websockets.connect(url, max_size=None) for _ in range(3)]
        messages: list[list[dict[str, Any]]] = [[] for _ in clients]
        readers = [asyncio.create_task(read_until_closed(ws, got)) for ws, got in zip(clients, messages, strict=True)]
        for ws in clients:
            for frame in frames:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "end"}))
        await eventually(lambda: len(daemon.core.sessions) == 3, 30)
        sessions = daemon.core.sessions.open_sessions()
        await eventually(lambda: all(session.pending_finals for session in sessions), 60)  # all held back
    finally:
        await daemon.stop()
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    for ws, got in zip(clients, messages, strict=True):
        assert ws.close_code == 1001, [m["type"] for m in got]
        started = [m["utterance_id"] for m in of_type(got, "speech_start")]
        assert started, "the session was fed"
        assert [m["utterance_id"] for m in of_type(got, "final")] == started, "one final per utterance, in order"
        assert max(m["end"] for m in of_type(got, "final")) < speech.size / 16000 - 20, "the rest was not fed"


async def test_a_final_the_engine_has_no_time_for_at_shutdown_comes_with_its_promised_text_then_1001() -> None:
    """The engine never gets to a final (its gate stays shut, as a machine busy with many clients'
    queued finals would leave it): past half of `shutdown_timeout_s` the final is sent with the
    text already promised, after an error `shutdown`, and the Close is 1001. It used to wait for
    the decode until the time ran out and the connection was cut (1006, no final)."""
    engine = GatedEngineDouble()
    command = np.concatenate([fixture_16k("lights_on.wav"), np.zeros(24000, dtype=np.float32)]).astype("<f4")
    daemon = Daemon(daemon_settings(shutdown_timeout_s=4.0), engine)
    await daemon.start()
    try:
        await daemon.core.wait_ready()
        ws = await websockets.connect(f"ws://127.0.0.1:{daemon.http_port}/v1/stream")
        messages: list[dict[str, Any]] = []
        reader = asyncio.create_task(read_until_closed(ws, messages))
        await ws.send(command.tobytes())
        await eventually(lambda: len(daemon.core.sessions) == 1, 30)
        (session,) = daemon.core.sessions.open_sessions()
        await eventually(lambda: session.pending_finals == 1, 30)
    finally:
        await daemon.stop()
    await asyncio.wait_for(reader, 30)
    assert [m["type"] for m in messages if m["type"] in ("error", "final")] == ["error", "final"], messages
    assert messages[-2]["code"] == "shutdown"
    assert ws.close_code == 1001
