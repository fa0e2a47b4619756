"""Shared test tools: the speech fixtures, word comparison, and a real daemon on ephemeral ports."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import tracemalloc
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import av
import numpy as np
import pytest
import soxr
import websockets
from aiohttp import web

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.clients.bench import normalise_words
from satellite_asr.clients.bench import word_error_rate as pooled_word_error_rate
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import Settings, load_settings
from satellite_asr.engines.base import Engine
from satellite_asr.homeassistant.names import HomeNames, rank_names
from satellite_asr.server import Daemon, in_process_daemon
from satellite_asr.session import TURN_DECISION
from satellite_asr.vad.turn import TurnVerdict

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool_missing(reason: str) -> NoReturn:
    """A tool outside the project that a test needs is missing: a skip, but a failure in CI
    (`CI=true`), where a skip would hide a broken install."""
    if IN_CI:
        pytest.fail(f"CI={os.environ['CI']}: {reason}", pytrace=False)
    pytest.skip(reason)


FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED: dict[str, list[str]] = json.loads((FIXTURES / "fixtures.json").read_text())
"""Fixture WAV name -> the commands spoken in it, in order."""


def fixture_16k(name: str) -> Audio:
    """A fixture WAV as 16 kHz mono float samples."""
    return read_wav(FIXTURES / name).to_16k_mono()


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Float samples as a mono 16-bit WAV file at `rate`."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def u8_wav(samples: np.ndarray, rate: int, block_align: int = 1) -> bytes:
    """Mono 8-bit WAV of float `samples`; FFmpeg reads it in frames of `block_align` samples (at
    least 4096), whatever the header says."""
    data = (np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, block_align, 8)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def encoded_audio(samples: np.ndarray, container: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    """16 kHz float `samples` encoded with FFmpeg's own encoders (PyAV), as a phone or browser would
    upload them (`stereo`: the same samples in both channels)."""
    pcm = (samples * 32767).astype(np.int16).reshape(1, -1)
    if layout == "stereo":
        pcm = np.repeat(pcm, 2, axis=1)  # packed s16: the channels interleaved
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


def pcm16(audio: Audio, rate: int = 24000) -> bytes:
    """16 kHz float samples as 16-bit PCM at `rate` (OpenAI's pcm16 is 24 kHz)."""
    resampled = soxr.resample(audio, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else audio
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def microphone_chunks(name: str, frame_s: float) -> list[bytes]:
    """A fixture as 16 kHz PCM16 messages of `frame_s` seconds each, as a microphone delivers them."""
    audio = pcm16(fixture_16k(name), SAMPLE_RATE)
    step = int(frame_s * SAMPLE_RATE) * 2
    return [audio[offset : offset + step] for offset in range(0, len(audio), step)]


def normalise(text: str) -> str:
    return normalise_words(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    return pooled_word_error_rate([(reference, hypothesis)])


WER_TOLERANCE = 0.2
"""How far a transcript of a fixture may stray from its words: another espeak-ng, CTranslate2 or
CPU may turn one word of a short command differently."""


def same_words(references: list[str], hypotheses: list[str]) -> bool:
    """One transcript per reference, each within `WER_TOLERANCE` of it or one word from it: in a
    four-word command one word is 25% (a fresh-clone run on two workers got "Open the the garage
    door." through Pipecat's Gradium service once; it passed three times alone)."""
    return len(references) == len(hypotheses) and all(
        word_error_rate(reference, hypothesis) <= max(WER_TOLERANCE, 1 / len(normalise(reference).split()))
        for reference, hypothesis in zip(references, hypotheses, strict=True)
    )


def part_home(*parts: str) -> tuple[str, ...]:
    """The home one part (or a few) of the names evaluation set (tests/fixtures/names) is heard in:
    every name of the evaluation home but the other parts' own, by rank (244 names for one part,
    about the issue's size; more for several). A name a part shares with its Piper twin
    (`piper_heldout34` says `heldout34`'s) is the part's own. (The benchmark's `part_home` in
    scripts/bench_names.py cuts the home's JSON instead, aliases and all, to a given size; these
    tests' texts were chosen in this simpler home.)"""
    names_dir = FIXTURES / "names"
    commands = json.loads((names_dir / "commands.json").read_text())
    own = {c["name"] for c in commands.values() if c["name"] and c["half"] in parts}
    other_parts = {c["name"] for c in commands.values() if c["name"] and c["half"] not in parts} - own
    home = rank_names(HomeNames.from_json(json.loads((names_dir / "home.json").read_text())), 10**6)
    return tuple(name for name in home if name not in other_parts)


def daemon_settings(**overrides: Any) -> Settings:
    """Settings for a daemon on loopback with ephemeral ports, no zeroconf, no Wyoming unless asked."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "http_port": 0,
        "zeroconf": False,
        "wyoming_uri": "none",
        "log_level": "DEBUG",
    }
    values.update(overrides)
    return load_settings(None, environ={}, overrides=values)


def running_daemon(engine: Engine | None = None, /, **overrides: Any) -> AbstractAsyncContextManager[Daemon]:
    """`in_process_daemon` with `daemon_settings(**overrides)`: started, its engine loaded, stopped
    (finals flushed) on exit.

    `engine`, an engine object (a test double), replaces the one the settings would build; the
    `engine` setting, by name, goes in `overrides` like any other.
    """
    return in_process_daemon(daemon_settings(**overrides), engine)


def serve_on_loopback(*flags: str) -> subprocess.CompletedProcess[str]:
    """`satellite-asr serve` with `flags`, on loopback should it start: the tests expect it to stop
    (killed after 60 s if it does not)."""
    loopback = ["--host", "127.0.0.1", "--http-port", "0", "--wyoming-uri", "none", "--no-zeroconf"]
    command = [sys.executable, "-m", "satellite_asr", "serve", *loopback, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


PCM_FRAME_BYTES = 3200
"""100 ms of 16 kHz 16-bit mono PCM."""


async def changed_mid_utterance(
    url: str, data: bytes, changes: list[str], begun: tuple[str, str], end: str
) -> list[dict[str, Any]]:
    """A command (`data`, 16 kHz PCM) twice over one stream of a hosted API, `changes` (settings
    messages) sent once the server has said the first has begun (in a message whose field `begun[0]`
    is `begun[1]`), then `end`: every message after that one, until the server closes."""
    field, value = begun
    async with websockets.connect(url) as ws:
        await ws.send(data[:32000])
        while json.loads(await ws.recv()).get(field) != value:
            pass
        for message in changes:
            await ws.send(message)
        await ws.send(data[32000:])
        await ws.send(data)
        await ws.send(end)
        return [json.loads(message) async for message in ws]


async def exchange(
    url: str,
    data: bytes,
    *after: str | bytes,
    headers: dict[str, str] | None = None,
    paced: bool = False,
    release: tuple[asyncio.Event, float] | None = None,
    frame: Callable[[bytes], str | bytes] = bytes,
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """One stream of a hosted API (Deepgram's, AssemblyAI's, ElevenLabs'): sends `data` (16 kHz
    16-bit PCM) in 100 ms frames, each as `frame` makes it a message, at full speed or `paced` as a
    microphone would (partials come only then), then the `after` messages, and reads every message
    until the server closes, or until one that `until` says is the last (the client then closes):
    the messages and the close code. `release`: an engine double's gate, set once that many
    seconds of audio are sent."""
    received: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers=headers) as ws:

        async def read() -> None:
            async for message in ws:
                received.append(json.loads(message))
                if until is not None and until(received[-1]):
                    return

        reader = asyncio.create_task(read())
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(frame(data[offset : offset + PCM_FRAME_BYTES]))
            if paced:
                await asyncio.sleep(0.1)
            if release is not None and offset >= release[1] * 2 * SAMPLE_RATE:
                release[0].set()
        if release is not None:
            release[0].set()
        for message in after:
            await ws.send(message)
        await reader
    return received, ws.close_code


def of_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The WebSocket protocol messages of one `type`, in order."""
    return [m for m in messages if m["type"] == kind]


def pcm_frames(data: bytes, frame: int = PCM_FRAME_BYTES) -> list[bytes]:
    """`data` cut into binary audio frames of `frame` bytes (100 ms of 16 kHz PCM by default)."""
    return [data[at : at + frame] for at in range(0, len(data), frame)]


def is_binary(message: dict[str, Any] | str | bytes) -> bool:
    """Whether a message is a binary frame (the audio of xAI's and Smallest AI's streams)."""
    return isinstance(message, bytes)


async def read_all(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    """Every message until the Close, whatever its code."""
    messages: list[dict[str, Any]] = []
    with suppress(websockets.ConnectionClosedError):
        async for message in ws:
            messages.append(json.loads(message))
    return messages


async def send_all(
    target: str,
    sent: tuple[dict[str, Any] | str | bytes, ...],
    headers: dict[str, str] | None = None,
    paced: bool = False,
    is_audio: Callable[[dict[str, Any] | str | bytes], bool] = lambda message: True,
) -> tuple[list[dict[str, Any]], int | None]:
    """One stream of an API whose messages are JSON (xAI's, Mistral's, Smallest AI's, Sarvam's):
    each of `sent` (a dict as JSON), `paced` 100 ms after each that `is_audio` as a microphone
    would; every message read until the Close, and its code. A send after the server closed is
    let go: what it sent before is the answer."""
    async with websockets.connect(target, additional_headers=headers) as ws:
        reader = asyncio.create_task(read_all(ws))
        for message in sent:
            with suppress(websockets.ConnectionClosed):
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
            if paced and is_audio(message):
                await asyncio.sleep(0.1)
        received = await reader
    return received, ws.close_code


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
FREE_PORTS_BELOW = 12000
"""How far under the kernel's ephemeral range `free_port` looks."""
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nothing listens on now, for a program that must be told its port.

    Not one the kernel hands out for port 0: those are its ephemeral ports, which every outgoing
    connection also takes (a test polling the program's /health until it has started among them),
    so one could hold it by the time the program binds it (seen in CI: the daemon exited, its port
    in use). A port just under that range, and never the same one twice in a run.
    """
    low = int(EPHEMERAL_PORTS.read_text().split()[0]) if EPHEMERAL_PORTS.exists() else 32768
    candidates = [port for port in range(max(1024, low - FREE_PORTS_BELOW), low) if port not in _handed_out]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port under {low}")


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """`app` (a scripted stand-in for a server the product talks to) on a free loopback port for the
    block; its port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def ws_url(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}/v1/stream"


HELD_BACK_KEEPALIVE: dict[str, float] = {"ping_interval": 0.5, "ping_timeout": 5.0}
"""The websockets library's keep-alive (its own 20 s and 20 s, shortened) for a client sending
three_commands.wav at once, which the daemon holds back about 9 s: a pong held behind the audio
misses the 5 s by seconds, while a loaded machine's event loop, which answers the pings in the
process that decodes, has room (2 s, which the tests had, left it little)."""


async def eventually(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Until `condition` holds (the daemon has got to a state); fails the test if it never does."""
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


class TurnDecision(NamedTuple):
    """One turn verdict a session handed to its endpointer, as its debug line (`TURN_DECISION`) says."""

    at_s: float
    """Where in the stream the audio the verdict read ends."""
    text: str
    mean_logprob: float | None
    pitch: float | None
    verdict: TurnVerdict


class TurnDecisions(logging.Handler):
    """Keeps the sessions' turn-decision lines, by session id."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._by_session: dict[str, list[TurnDecision]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg is TURN_DECISION:
            session, _, at_s, text, logprob, pitch, verdict = record.args  # type: ignore[misc]
            decision = TurnDecision(at_s, text, logprob, pitch, TurnVerdict(verdict))
            self._by_session.setdefault(session, []).append(decision)

    def of_session(self, session: str) -> list[TurnDecision]:
        return list(self._by_session.get(session, []))

    def every(self) -> list[TurnDecision]:
        """Every session's, in the order the sessions began (one session: its own, in order)."""
        return [decision for decisions in self._by_session.values() for decision in decisions]


@contextmanager
def turn_decisions() -> Iterator[TurnDecisions]:
    """The turn decisions every session of an in-process daemon makes while this lasts."""
    logger = logging.getLogger("satellite_asr.session")
    handler, level = TurnDecisions(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@asynccontextmanager
async def traced_client(script: str, *args: str) -> AsyncIterator[Callable[[], int]]:
    """Runs the Python `script` as a client in a process of its own, so that tracing this process's
    memory measures the daemon's alone; yields how many bytes that has grown since the client began."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *args)
        try:
            yield lambda: tracemalloc.get_traced_memory()[0] - before
        finally:
            client.kill()
            await client.wait()
    finally:
        tracemalloc.stop()


async def curl_peak_memory(*args: str) -> int:
    """The daemon's peak Python memory (tracemalloc, this process) while curl (another process, so
    that its own buffers do not count) makes the request `args` say; curl must succeed."""
    tracemalloc.start()
    try:
        process = await asyncio.create_subprocess_exec("curl", "-sS", *args)
        assert await process.wait() == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def error_code(body: dict[str, Any]) -> str:
    """The code of an error body in any of the shapes the daemon answers in: OpenAI's, Deepgram's,
    ElevenLabs' (`detail.status`) or its own."""
    if isinstance(body.get("error"), dict):
        return str(body["error"]["code"])
    if isinstance(body.get("detail"), dict):
        return str(body["detail"]["status"])
    return str(body.get("err_code") or body["code"])


async def expect_continue_answer(
    port: int,
    *headers: str,
    host: str = "127.0.0.1",
    length: int = 1024,
    source: str = "127.0.0.1",
    target: str = "/v1/audio/transcriptions",
    content_type: str = "multipart/form-data; boundary=b",
) -> tuple[int, str]:
    """A raw client (a function, not a class) from `source` that sends only the headers of an upload
    to `target` announcing a `length`-byte body with `Expect: 100-continue`, never the body: the
    status it is answered with, and for a refusal the error's code (a refusal must close the connection)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {host}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Expect: 100-continue",
        *headers,
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        status = int((await asyncio.wait_for(reader.readline(), 30)).split()[1])
        if status == 100:
            return status, ""
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).lower()
        assert b"\r\nconnection: close\r\n" in head, "the body it announced is not coming: the connection ends"
        length = next(int(line[15:]) for line in head.split(b"\r\n") if line.startswith(b"content-length:"))
        return status, error_code(json.loads(await reader.readexactly(length)))
    finally:
        writer.transport.abort()


@asynccontextmanager
async def an_upload_holding_the_only_slot(daemon: Daemon) -> AsyncIterator[None]:
    """An OpenAI upload whose body is still arriving, holding the one slot of `max_uploads` (1) that
    every upload API shares, for as long as the context lasts."""
    _, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
    writer.write(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    )
    await writer.drain()
    try:
        await eventually(lambda: len(daemon.uploads.connections) == 1)
        yield
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def leave_while_throttled(
    daemon: Daemon, transport: asyncio.BaseTransport, send: Callable[[], Awaitable[None]]
) -> None:
    """`send` 1 s of audio over and over, far faster than real time, until the daemon holds the
    client back, then reset the connection as a crashed client does; the session must end within
    10 s and be fed nothing more, though the socket still holds a minute of its audio."""
    flood = asyncio.create_task(_for_ever(send))
    await eventually(lambda: len(daemon.core.sessions) == 1, 10)
    (session,) = daemon.core.sessions.open_sessions()
    await eventually(lambda: session.seconds_received >= 3, 20)  # 1 s ahead is all it may be: held back
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    transport.abort()
    await asyncio.gather(flood, return_exceptions=True)
    await eventually(lambda: len(daemon.core.sessions) == 0, 10)
    fed = session.samples_received
    await asyncio.sleep(1.0)
    assert session.samples_received == fed, "the session of a client gone is fed no more"


async def close_while_throttled(daemon: Daemon, ws: websockets.ClientConnection, second: str | bytes) -> None:
    """Send `second` (a message of 1 s of audio) 20 times, far faster than real time; once the daemon
    holds the client back, send a Close frame and keep the connection: the daemon must answer it at
    once and end the session, not feed what it had read ahead at real-time pace first."""
    for _ in range(20):
        await ws.send(second)
    await eventually(lambda: len(daemon.core.sessions) == 1, 10)
    (session,) = daemon.core.sessions.open_sessions()
    await eventually(lambda: session.seconds_received >= 2, 20)  # held back: 1 s ahead at most
    async with ws.send_context():
        ws.protocol.send_close(1000)
    await asyncio.wait_for(ws.wait_closed(), 30)
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
    await eventually(lambda: len(daemon.core.sessions) == 0, 10)
    assert session.seconds_received < 15, "not fed on at real-time pace after the client's Close"


async def _for_ever(send: Callable[[], Awaitable[None]]) -> None:
    while True:
        await send()


TEXT_OPCODE, BINARY_OPCODE, CLOSE_OPCODE = 0x1, 0x2, 0x8
"""WebSocket frame types (RFC 6455)."""


def client_frame(payload: bytes, opcode: int = TEXT_OPCODE) -> bytes:
    """A client-to-server WebSocket frame, masked as a client's must be (text by default), by hand:
    for tests whose client misbehaves at the frame level."""
    mask = os.urandom(4)
    return _client_frame_head(opcode, len(payload), mask) + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _client_frame_head(opcode: int, size: int, mask: bytes) -> bytes:
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + mask


async def read_server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server-to-client WebSocket frame (not masked): its opcode and payload."""
    first, second = await asyncio.wait_for(reader.readexactly(2), 30)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


async def read_server_frames_until_close(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """The server's frames up to and with its Close (`read_server_frame`'s each)."""
    frames = [await read_server_frame(reader)]
    while frames[-1][0] != CLOSE_OPCODE:
        frames.append(await read_server_frame(reader))
    return frames


def close_code_after_oversized_frame(port: int, path: str, size: int, tls: ssl.SSLContext | None = None) -> int | None:
    """The close code a raw client reads that sends a binary frame of `size` zero bytes (over the
    daemon's limit) and then 16 frames of 3200 bytes, reading as it sends; None when the connection
    ends without the server's Close (a client library's 1006).

    It writes as a client library does: a write that fails (the connection reset) ends the
    connection, and the Close, read by the kernel but not yet by the client, with it. Call it in a
    thread of its own (`asyncio.to_thread`): its event loop is then its own, as a client's in another
    process is. On the daemon's loop it never lost the Close (0 of 2000): the server's close and the
    client's reads took turns. `tls`: over TLS, trusting that context, to `localhost`."""
    return asyncio.run(_close_code_after_oversized_frame(port, path, size, tls))


async def _close_code_after_oversized_frame(port: int, path: str, size: int, tls: ssl.SSLContext | None) -> int | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname=tls and "localhost")
    try:
        answer = await websocket_upgrade(reader, writer, port, path)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        sending = asyncio.create_task(_send_oversized_frame(writer, size))
        try:
            close = (await read_server_frames_until_close(reader))[-1][1]
        except (ConnectionError, asyncio.IncompleteReadError):
            return None
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        (code,) = struct.unpack("!H", close[:2])
        return int(code)
    finally:
        writer.transport.abort()


async def _send_oversized_frame(writer: asyncio.StreamWriter, size: int) -> None:
    piece = 1 << 16
    with suppress(ConnectionError):
        writer.write(_client_frame_head(BINARY_OPCODE, size, bytes(4)))  # a zero mask: the payload goes as it is
        for offset in range(0, size, piece):
            writer.write(bytes(min(piece, size - offset)))
            await writer.drain()
        for _ in range(16):
            writer.write(client_frame(bytes(3200), BINARY_OPCODE))
            await writer.drain()


def upgrade_request(port: int, path: str) -> bytes:
    """A WebSocket opening request, as a client writes it."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )


async def websocket_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, path: str = "/v1/stream"
) -> bytes:
    """The opening handshake, by hand; returns the server's answer (its status line and headers)."""
    writer.write(upgrade_request(port, path))
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
