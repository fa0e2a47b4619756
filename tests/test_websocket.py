"""The WebSocket protocol end to end: real daemon, real Silero, real tiny.en, real clients."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soxr
import websockets
from websockets.exceptions import ConnectionClosed

from satellite_asr import protocols
from satellite_asr.clients import audio_source, stream_client
from satellite_asr.clients.stream_client import stream_file
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import EngineError
from satellite_asr.protocols.websocket import MAX_FRAME_BYTES
from satellite_asr.server import Daemon
from tests.doubles import CrashingEngineDouble, GatedEngineDouble, SlowLoadingEngineDouble
from tests.helpers import (
    BINARY_OPCODE,
    CLOSE_OPCODE,
    EXPECTED,
    FIXTURES,
    HELD_BACK_KEEPALIVE,
    TEXT_OPCODE,
    WER_TOLERANCE,
    client_frame,
    close_code_after_oversized_frame,
    close_while_throttled,
    daemon_settings,
    eventually,
    fixture_16k,
    leave_while_throttled,
    normalise,
    of_type,
    read_server_frame,
    read_server_frames_until_close,
    running_daemon,
    same_words,
    traced_client,
    websocket_upgrade,
    word_error_rate,
    write_wav,
    ws_url,
)

pytestmark = pytest.mark.timeout(120)


def f32(audio: np.ndarray) -> bytes:
    return audio.astype("<f4").tobytes()


async def receive_until_close(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    messages = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return messages


async def next_message(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] == kind:
            return message


@pytest.mark.parametrize("name", ["lights_on.wav", "weather.wav", "timer.wav", "music.wav"])
async def test_one_command_gives_one_final_with_its_words(name: str) -> None:
    async with running_daemon() as daemon:
        messages = await stream_file(FIXTURES / name, ws_url(daemon), fast=True)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "session_created"
    finals = of_type(messages, "final")
    assert len(finals) == 1
    assert word_error_rate(EXPECTED[name][0], finals[0]["text"]) <= WER_TOLERANCE, finals[0]["text"]
    assert finals[0]["is_speech_final"] is True, "the trailing pause ends it, not the end of the stream"
    assert kinds.index("speech_start") < kinds.index("final")
    assert 0.0 <= finals[0]["start"] < finals[0]["end"] <= read_wav(FIXTURES / name).seconds


async def test_pauses_split_commands_into_one_final_each_at_real_time_pace() -> None:
    async with running_daemon() as daemon:
        messages = await stream_file(FIXTURES / "three_commands.wav", ws_url(daemon))
    finals = of_type(messages, "final")
    assert same_words(EXPECTED["three_commands.wav"], [f["text"] for f in finals]), finals
    assert [f["utterance_id"] for f in finals] == [1, 2, 3]
    assert all(f["is_speech_final"] for f in finals)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(finals))
    partials = of_type(messages, "partial")
    assert partials, "partials arrive while a command is spoken"
    for partial in partials:
        final_index = messages.index(finals[partial["utterance_id"] - 1])
        assert messages.index(partial) < final_index, "no partial after its utterance's final"
        assert partial["is_speech_final"] is False


async def test_session_created_reports_effective_settings() -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        config = {"type": "config", "sample_rate": 48000, "encoding": "s16le", "vad": {"silence_ms": 500}}
        await ws.send(json.dumps(config))
        created = json.loads(await ws.recv())
    assert created["type"] == "session_created" and created["session_id"]
    effective = created["config"]
    assert effective["sample_rate"] == 48000 and effective["encoding"] == "s16le"
    assert effective["vad"]["silence_ms"] == 500 and effective["vad"]["min_speech_ms"] == 300
    assert effective["partials"] is True and effective["engine"] == "whisper" and effective["languages"] == ["en"]


async def test_a_silence_shorter_than_the_daemons_short_one_lowers_that_too() -> None:
    """`vad.silence_ms` takes 100-10000 (docs/protocol.md, the page's field): 150 alone was refused
    because the daemon's own min_silence_ms (200) was longer."""
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "vad": {"silence_ms": 150}}))
        created = json.loads(await ws.recv())
    assert created["type"] == "session_created", created
    assert created["config"]["vad"]["silence_ms"] == 150 and created["config"]["vad"]["min_silence_ms"] == 150


async def test_a_short_silence_longer_than_the_daemons_long_one_raises_that_too() -> None:
    """The other way round: `vad.min_silence_ms` 1000 alone was refused because the daemon's own
    silence_ms (800) was shorter, though it takes 64-10000."""
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "vad": {"min_silence_ms": 1000}}))
        created = json.loads(await ws.recv())
    assert created["type"] == "session_created", created
    assert created["config"]["vad"]["min_silence_ms"] == 1000 and created["config"]["vad"]["silence_ms"] == 1000


async def test_audio_without_config_uses_defaults() -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(f32(fixture_16k("lights_on.wav")))
        created = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    assert created["type"] == "session_created"
    assert created["config"]["encoding"] == "f32le" and created["config"]["sample_rate"] == 16000
    assert word_error_rate(EXPECTED["lights_on.wav"][0], of_type(messages, "final")[0]["text"]) <= WER_TOLERANCE


async def test_other_rates_are_resampled() -> None:
    import soxr

    audio = soxr.resample(fixture_16k("music.wav"), 16000, 44100)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 44100, "encoding": "s16le"}))
        for offset in range(0, len(pcm), 8820):
            await ws.send(pcm[offset : offset + 8820])
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    (final,) = of_type(messages, "final")
    assert word_error_rate(EXPECTED["music.wav"][0], final["text"]) <= WER_TOLERANCE


async def test_flush_finalizes_now_and_is_not_speech_final() -> None:
    audio = fixture_16k("music.wav")[: int(2.3 * 16000)]  # cut mid-command, no trailing pause
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(f32(audio))
        await ws.send(json.dumps({"type": "flush"}))
        final = await next_message(ws, "final")
        assert final["is_speech_final"] is False
        assert final["end"] == pytest.approx(2.3, abs=0.05)
        assert "music" in normalise(final["text"])
        await ws.send(json.dumps({"type": "end"}))
        rest = await receive_until_close(ws)
        assert ws.close_code == 1000
    assert of_type(rest, "final") == [], "exactly one final per utterance"


async def test_flush_includes_the_resamplers_tail_and_the_stream_goes_on() -> None:
    """24 kHz audio is resampled as it streams; soxr holds its last milliseconds until told the input
    ended. A flush feeds them, so the utterance ends where the client's audio ends, and the next goes on."""
    rate = 24000
    audio = fixture_16k("music.wav")[: int(2.3 * 16000)]  # cut mid-command, no trailing pause
    pcm = (np.clip(soxr.resample(audio, 16000, rate), -1, 1) * 32767).astype("<i2").tobytes()
    config = {"type": "config", "sample_rate": rate, "encoding": "s16le", "vad": {"turn_detection": "manual"}}
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps(config))
        finals = []
        for _ in range(2):
            for offset in range(0, len(pcm), 4800):
                await ws.send(pcm[offset : offset + 4800])
            await ws.send(json.dumps({"type": "flush"}))
            finals.append(await next_message(ws, "final"))
    seconds = len(pcm) // 2 / rate
    assert [f["end"] for f in finals] == pytest.approx([seconds, 2 * seconds], abs=0.0011)
    assert all("music" in normalise(f["text"]) for f in finals)


async def test_a_client_that_flushes_every_100_ms_still_has_its_speech_transcribed() -> None:
    """Each flush comes before a word has lasted 160 ms; the daemon must not throw the word away
    (abuse probe: every word was lost), so the command comes back, cut where the client cut it."""
    audio = fixture_16k("music.wav")
    frame = 1600  # 100 ms
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        for offset in range(0, len(audio), frame):
            await ws.send(f32(audio[offset : offset + frame]))
            await ws.send(json.dumps({"type": "flush"}))
        await ws.send(json.dumps({"type": "end"}))
        finals = of_type(await receive_until_close(ws), "final")
    assert finals and all(f["is_speech_final"] is False for f in finals)
    heard = sum(f["end"] - f["start"] for f in finals)
    assert heard >= 0.5 * len(audio) / 16000, finals


async def test_an_empty_language_is_the_daemons_default_and_null_detects() -> None:
    async with running_daemon(language="en") as daemon:
        languages = []
        for config in ({"language": ""}, {}, {"language": None}, {"language": "en-US"}):
            async with websockets.connect(ws_url(daemon)) as ws:
                await ws.send(json.dumps({"type": "config", **config}))
                languages.append((await next_message(ws, "session_created"))["config"]["language"])
    assert languages == ["en", "en", None, "en"]


async def test_end_sends_pending_final_then_closes_normally() -> None:
    audio = fixture_16k("weather.wav")[: int(2.4 * 16000)]
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(f32(audio))
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
        assert ws.close_code == 1000
    (final,) = of_type(messages, "final")
    assert final["is_speech_final"] is False and "weather" in normalise(final["text"])


async def test_silence_gives_no_final() -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(f32(np.zeros(16000 * 3, dtype=np.float32)))
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    assert [m["type"] for m in messages] == ["session_created"]


# --- bad input ---------------------------------------------------------------------------------


async def test_non_json_and_unknown_types_are_errors_and_the_session_goes_on() -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send("this is not json")
        first = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "dance"}))
        second = json.loads(await ws.recv())
        await ws.send(json.dumps([1, 2]))
        third = json.loads(await ws.recv())
        await ws.send(f32(fixture_16k("lights_on.wav")))
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    for error in (first, second, third):
        assert error["type"] == "error" and error["code"] == "invalid_message" and error["message"]
    assert "dance" in second["message"]
    assert len(of_type(messages, "final")) == 1


@pytest.mark.parametrize(
    ("config", "mentions"),
    [
        ({"encoding": "mp3"}, "encoding"),
        ({"sample_rate": 96000}, "sample_rate"),
        ({"sample_rate": 4000}, "sample_rate"),
        ({"vad": {"silence_ms": 5}}, "vad.silence_ms"),
        ({"vad": {"min_silence_ms": 500, "silence_ms": 300}}, "min_silence_ms (500) must not be longer"),
        ({"vad": {"threshold": "high"}}, "vad.threshold"),
        ({"languages": "en"}, "unknown field"),
        ({"\ud800": 1}, "unknown field"),  # a lone surrogate, quoted as its escape: see below
        # the daemon's settings are flat, a session's endpointing is in `vad`: said where it goes
        ({"silence_ms": 500}, "unknown field(s): silence_ms (endpointing values go in the vad object: vad.silence_ms)"),
        ({"vad_threshold": 0.6}, "(endpointing values go in the vad object: vad.threshold)"),
        ({"vad": {"vad_threshold": 0.6}}, "unknown vad field(s): vad_threshold (vad_threshold is threshold)"),
        ({"language": "de"}, "'de' is not one of the languages of this engine (en)"),  # tiny.en: English only
        ({"language": 7}, "language must be"),
        ({"context": 0}, "context must be text"),  # falsy wrong types were once taken as none (abuse probe)
        ({"context": []}, "context must be text"),
        ({"vad": False}, "vad must be an object"),
        ({"vad": ""}, "vad must be an object"),
    ],
)
async def test_invalid_config_is_an_error_and_closes_1008(config: dict[str, Any], mentions: str) -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", **config}))
        messages = await receive_until_close(ws)
        assert ws.close_code == 1008
        assert messages[0]["type"] == "error" and messages[0]["code"] == "invalid_config"
        assert mentions in messages[0]["message"]
        messages[0]["message"].encode()  # no lone surrogate, which strict JSON parsers refuse
        assert len(daemon.core.sessions) == 0


async def test_a_field_name_that_ends_like_a_cut_message_is_cut_too() -> None:
    """An error's message is at most `MESSAGE_CHARS` (and the length it had): a client's text quoted
    at its end that happened to end like the mark of a cut ("… (cut: N characters)", N of any
    length) passed for a message cut already, and came back whole (here 100 KB)."""
    prefix = "unknown field(s): "
    field = "x" * (protocols.MESSAGE_CHARS - len(prefix)) + "… (cut: " + "9" * 100_000 + " characters)"
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", field: 1}))
        messages = await receive_until_close(ws)
    assert messages[0]["code"] == "invalid_config" and messages[0]["message"].startswith(prefix + "xxx")
    assert len(messages[0]["message"]) < protocols.MESSAGE_CHARS + 50


@pytest.mark.parametrize(
    ("path", "first_message", "close_code"),
    [
        ("/v1/stream", {"type": "config", "vad": {"silence_ms": 5}}, 1008),  # refused: the handler closes
        ("/v1/realtime", None, 1001),  # idle: the session's expiry closes, in a task of its own
    ],
)
async def test_the_servers_close_waits_for_the_clients_close(
    path: str, first_message: dict[str, Any] | None, close_code: int
) -> None:
    """The server's Close is answered by the client's before the server closes the connection
    (RFC 6455's closing handshake). It closed the socket right after its Close when its read-ahead
    task was waiting for a message, as it always is between messages (aiohttp closes at once when
    another task waits in `receive()`): audio the client had sent meanwhile then made the kernel
    reset the connection, and a client sending without waiting for `session_created` lost the error
    and the Close (1006) about half the time on a busy machine."""
    async with running_daemon(idle_timeout_s=1.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port, path)
        if first_message is not None:
            writer.write(client_frame(json.dumps(first_message).encode()))
        frames = await read_server_frames_until_close(reader)
        writer.write(client_frame(bytes(6400), opcode=BINARY_OPCODE))  # audio in flight when the server closed
        with pytest.raises(TimeoutError):  # neither an end nor a reset: the server waits, reading
            await asyncio.wait_for(reader.read(1), 0.5)
        writer.write(client_frame(frames[-1][1], opcode=CLOSE_OPCODE))
        assert await asyncio.wait_for(reader.read(), 30) == b"", "the server closes once the client has"
        writer.close()
    assert struct.unpack("!H", frames[-1][1][:2]) == (close_code,)
    if first_message is not None:
        assert json.loads(frames[0][1])["code"] == "invalid_config"


@pytest.mark.parametrize("path", ["/v1/stream", "/v1/realtime"])
@pytest.mark.parametrize("closer", ["shutdown", "idle_timeout"])
async def test_a_client_that_keeps_sending_while_the_server_closes_gets_the_close_and_a_clean_end(
    path: str, closer: str
) -> None:
    """The server's Close to a client whose audio is still in flight (the server ends the session:
    an idle timeout, shutdown) completes the closing handshake: the server reads what comes until
    the client's Close, then ends the connection. Another task than the handler closes here, and
    the handler, seeing the connection closed, ends too: its own close waits for the one under way
    (one close at a time), as aiohttp closes the socket once the handler returns. Before, the
    handler's close returned at once, as did a close while the read-ahead task waited in `receive()`:
    the socket was closed under the audio still arriving, and the kernel reset the connection."""
    silence = (
        bytes(3200 * 4)
        if path == "/v1/stream"
        else json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(6400)).decode()}).encode()
    )
    opcode = BINARY_OPCODE if path == "/v1/stream" else TEXT_OPCODE
    async with running_daemon(idle_timeout_s=1.0 if closer == "idle_timeout" else 60.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port, path)

        async def send_audio(frames: int | None) -> None:
            for _ in itertools.repeat(None) if frames is None else range(frames):
                writer.write(client_frame(silence, opcode=opcode))
                await writer.drain()
                await asyncio.sleep(0.01)

        sending = asyncio.create_task(send_audio(None))
        frames = [await read_server_frame(reader)]  # the session's announcement
        stopping = asyncio.create_task(daemon.stop()) if closer == "shutdown" else None
        while frames[-1][0] != CLOSE_OPCODE:
            frames.append(await read_server_frame(reader))
        sending.cancel()
        await send_audio(20)  # what the client sent before it read the Close
        writer.write(client_frame(frames[-1][1], opcode=CLOSE_OPCODE))
        end = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        if stopping is not None:
            await stopping
    assert struct.unpack("!H", frames[-1][1][:2]) == (1001,)
    assert frames[-1][1][2:].decode() == closer
    assert end == b"", "the server ends the connection once the client has closed, not under its audio"


async def test_partial_frames_are_dropped_with_an_error() -> None:
    audio = fixture_16k("timer.wav")
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(b"\x00" * 7)
        created = json.loads(await ws.recv())
        error = json.loads(await ws.recv())
        await ws.send(f32(audio))
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    assert created["type"] == "session_created"
    assert error["code"] == "invalid_audio" and "7 bytes" in error["message"]
    assert len(of_type(messages, "final")) == 1


@pytest.mark.parametrize(
    ("config", "daemon_language", "effective"),
    [
        ({}, "en", "en"),  # absent: the daemon's default
        ({"language": None}, "en", None),  # null: the engine detects it
        ({"language": "en-GB"}, "", "en"),  # a region tag falls back to the language the engine knows
        ({}, "en-US", "en"),  # so does the daemon's own (it was handed to the engine as it was written)
    ],
)
async def test_config_language(config: dict[str, Any], daemon_language: str, effective: str | None) -> None:
    async with running_daemon(language=daemon_language) as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", **config}))
        created = await next_message(ws, "session_created")
    assert created["config"]["language"] == effective


async def test_a_rejected_first_frame_does_not_lock_the_config() -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(b"\x00" * 7)
        assert (await next_message(ws, "error"))["code"] == "invalid_audio"  # after the first session_created
        await ws.send(json.dumps({"type": "config", "encoding": "s16le", "sample_rate": 8000}))
        created = await next_message(ws, "session_created")
    assert (created["config"]["encoding"], created["config"]["sample_rate"]) == ("s16le", 8000)


async def test_length_cap_forces_a_final_and_the_speech_goes_on_in_the_next_utterance() -> None:
    async with running_daemon(max_utterance_s=1.0) as daemon:
        messages = await stream_file(FIXTURES / "music.wav", ws_url(daemon), fast=True)
        capped = daemon.core.metrics.registry.get_sample_value("satellite_asr_endpoints_total", {"reason": "forced"})
    finals = of_type(messages, "final")
    assert len(finals) >= 2 and len(of_type(messages, "speech_start")) == len(finals)
    first = finals[0]
    assert first["is_speech_final"] is False
    assert first["end"] - first["start"] <= 1.0 + 0.032  # the cap is checked once per 32 ms VAD window
    assert finals[1]["start"] >= first["end"], "the next utterance takes the speech from where the cap cut it"
    assert capped == sum(f["endpoint"] == "forced" for f in finals) >= 1, "each forced end is counted once"
    words = " ".join(f["text"] for f in finals)
    assert word_error_rate(EXPECTED["music.wav"][0], words) <= 0.5, words  # words cut at the seams may change


async def test_a_first_word_before_a_dip_is_in_the_final() -> None:
    """ "Stop" is shorter than `min_speech_ms` and a dip of more than 100 ms follows it: the onset
    that then confirms speech starts back at "stop", not 300 ms before the dip's end."""
    async with running_daemon() as daemon:
        messages = await stream_file(FIXTURES / "turns" / "fresh14_complete_10.wav", ws_url(daemon), fast=True)
    (final,) = of_type(messages, "final")
    assert normalise(final["text"]).startswith("stop playing music"), final["text"]


async def test_an_onset_longer_than_the_idle_audio_keeps_its_start() -> None:
    """With `min_speech_ms` of 3 s the onset takes longer to confirm than the audio once kept between
    utterances (2 s): the final still starts at the first word."""
    commands = [fixture_16k(name)[7600:31600] for name in ("music.wav", "lights_on.wav", "weather.wav")]
    gap = np.zeros(960, np.float32)  # 60 ms: too short a dip to end the onset
    audio = np.concatenate([gap * 10, commands[0], gap, commands[1], gap, commands[2], np.zeros(24000, np.float32)])
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "vad": {"min_speech_ms": 3000}}))
        await ws.send(f32(audio))
        await ws.send(json.dumps({"type": "end"}))
        finals = of_type(await receive_until_close(ws), "final")
    assert finals and finals[0]["start"] <= 0.6 - 0.3 + 0.05, finals
    assert normalise(finals[0]["text"]).startswith("play some music"), finals


async def test_a_file_sent_fast_outlasts_the_keepalive_while_the_daemon_paces_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The daemon reads a fast client's audio at real-time pace after `max_feed_ahead_s`; a client
    that sent everything at once had its keepalive ping wait behind the audio past its timeout and
    dropped the stream (1006). Here with a 2 s ping (20 s in use) and a 12 s file (40 s in use)."""
    monkeypatch.setattr(stream_client, "PING_S", 2.0)
    monkeypatch.setattr(audio_source, "FAST_LEAD_S", 1.0)
    three = fixture_16k("three_commands.wav")
    path = write_wav(tmp_path / "long.wav", np.concatenate([three, three])[: 12 * 16000])
    async with running_daemon(max_feed_ahead_s=1.0) as daemon:
        messages = await stream_file(path, ws_url(daemon), fast=True)
    commands = EXPECTED["three_commands.wav"]
    assert same_words([*commands, commands[0]], [f["text"] for f in of_type(messages, "final")])


async def test_a_client_that_sends_a_file_at_once_has_its_pings_answered_while_held_back() -> None:
    """The websockets library pings every 20 s and drops a connection whose pong takes 20 s more.
    Holding back a fast client, the daemon read nothing, so its pings waited behind its audio: a
    4-minute file sent at once was cut with 1011 after 53 s. It now reads ahead of the held-back
    session (`websocket_read_ahead_mb`). Here with a 0.5 s ping, a 5 s timeout and 9 s held back
    (`HELD_BACK_KEEPALIVE`)."""
    audio = f32(fixture_16k("three_commands.wav"))
    async with running_daemon(max_feed_ahead_s=1.0) as daemon:
        url = ws_url(daemon)
        async with websockets.connect(url, compression=None, **HELD_BACK_KEEPALIVE) as ws:
            for offset in range(0, len(audio), 6400):
                await ws.send(audio[offset : offset + 6400])
            await ws.send(json.dumps({"type": "end"}))
            messages = await receive_until_close(ws)
            assert ws.close_code == 1000, ws.close_reason
    assert same_words(EXPECTED["three_commands.wav"], [f["text"] for f in of_type(messages, "final")])


SEND_AT_ONCE = """
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], compression=None, ping_interval=None) as ws:
        for _ in range(int(sys.argv[2])):
            await ws.send(bytes(int(sys.argv[3])))
        await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.parametrize(("frames", "frame_bytes"), [(256, 1 << 16), (100_000, 4)])
async def test_reading_ahead_of_a_held_back_session_stops_at_its_limit(frames: int, frame_bytes: int) -> None:
    """Past `websocket_read_ahead_mb` a held-back client's audio stays in the sockets (TCP back-pressure),
    here 2 MiB of a 16 MiB file sent at once; and of a flood of one-sample frames, whose every message
    costs Python more than its audio (counting data alone, they held 11 MiB a second later, and growing)."""
    limit = 2 << 20
    async with (
        running_daemon(max_feed_ahead_s=1.0, websocket_read_ahead_mb=limit >> 20) as daemon,
        traced_client(SEND_AT_ONCE, ws_url(daemon), str(frames), str(frame_bytes)) as grown,
    ):
        await eventually(lambda: grown() >= limit / 2)
        await asyncio.sleep(1.0)  # time to read on, were there no limit
        held = grown()
    assert held < 2 * limit, f"{held / (1 << 20):.1f} MiB held"


HELD_BACK_THEN_TEXT = """
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], compression=None, ping_interval=None) as ws:
        for _ in range(40):  # 40 s of f32le: held back
            await ws.send(bytes(64000))
        for _ in range(64):
            await ws.send("a" * ((256 << 10) - 1) + sys.argv[2])
        await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.parametrize("last", ["a", "\N{GRINNING FACE}"])
async def test_text_read_ahead_counts_as_python_holds_it(last: str) -> None:
    """One character beyond the BMP makes Python hold a text at 4 bytes a character: counted by its
    length, 64 frames of 256 KiB each ending in an emoji held 28 MiB under an 8 MiB read-ahead."""
    limit = 8 << 20
    async with (
        running_daemon(max_feed_ahead_s=1.0, websocket_read_ahead_mb=limit >> 20) as daemon,
        traced_client(HELD_BACK_THEN_TEXT, ws_url(daemon), last) as grown,
    ):
        await eventually(lambda: grown() >= limit / 2)
        await asyncio.sleep(2.0)  # time to read on, were the limit not met
        held = grown()
    assert held < 1.5 * limit, f"{held / (1 << 20):.1f} MiB held"


async def test_audio_read_ahead_of_a_client_gone_is_not_fed() -> None:
    """What the daemon read ahead while the handler waited (here for a flush's final, which the gated
    engine holds) is for no one once the client's connection is gone: it is dropped, not fed to VAD."""
    engine = GatedEngineDouble()
    async with running_daemon(engine) as daemon:
        ws = await websockets.connect(ws_url(daemon), compression=None)
        await ws.send(f32(fixture_16k("weather.wav")[: int(2.4 * 16000)]))
        await ws.send(json.dumps({"type": "flush"}))
        await eventually(lambda: len(engine.finals) >= 1, 30)  # the handler waits for that final
        (session,) = daemon.core.sessions.open_sessions()
        flushed = session.samples_received
        await ws.send(f32(np.zeros(5 * 16000, dtype=np.float32)))
        ws.transport.close()  # no Close frame: the connection ends behind the audio
        await eventually(lambda: len(daemon.http_connections) == 0, 30)
        engine.gate.set()
        await eventually(lambda: len(daemon.core.sessions) == 0, 30)
    assert session.samples_received == flushed


async def test_a_close_behind_held_back_audio_is_answered_at_once() -> None:
    """A client's Close without an `end` wants nothing more: it is answered at once and what was read
    ahead is dropped. Taken in its turn, it waited while the audio before it went in at real-time
    pace (about 4 minutes of it at most), decoded for no one, the session slot held."""
    second = f32(fixture_16k("three_commands.wav")[:16000])
    async with running_daemon(max_feed_ahead_s=1.0) as daemon:
        ws = await websockets.connect(ws_url(daemon), compression=None)
        await close_while_throttled(daemon, ws, second)


async def test_a_client_that_sends_end_and_close_at_once_reads_its_finals() -> None:
    """RFC 6455 lets a client read after sending its Close frame: one that sends its audio, `end` and
    Close at once (websocat at the end of its input) reads until the server's Close. Its Close is
    handled in its turn; read ahead with aiohttp's autoclose, it closed the connection first."""
    audio = f32(fixture_16k("three_commands.wav"))
    async with running_daemon() as daemon:
        ws = await websockets.connect(ws_url(daemon), compression=None)
        for offset in range(0, len(audio), 64000):
            await ws.send(audio[offset : offset + 64000])
        await ws.send(json.dumps({"type": "end"}))
        async with ws.send_context():
            ws.protocol.send_close(1000)
        messages = await receive_until_close(ws)
    assert same_words(EXPECTED["three_commands.wav"], [f["text"] for f in of_type(messages, "final")])


async def test_nan_samples_are_silence_and_counted() -> None:
    noisy = fixture_16k("lights_on.wav").copy()
    noisy[:4000] = np.nan
    noisy[-4000:] = np.inf
    async with running_daemon() as daemon:
        async with websockets.connect(ws_url(daemon)) as ws:
            await ws.send(f32(noisy))
            await ws.send(json.dumps({"type": "end"}))
            messages = await receive_until_close(ws)
        metrics = daemon.core.metrics.render().decode()
    assert "satellite_asr_invalid_samples_total 8000.0" in metrics
    (final,) = of_type(messages, "final")
    assert word_error_rate(EXPECTED["lights_on.wav"][0], final["text"]) <= WER_TOLERANCE


async def test_a_frame_of_exactly_the_limit_is_audio() -> None:
    """The protocol allows at most 1 MiB a frame: a frame of exactly that is taken (aiohttp's own
    limit refuses an uncompressed message as long as itself)."""
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon), max_size=None, compression=None) as ws:
        await ws.send(f32(np.zeros(MAX_FRAME_BYTES // 4, dtype=np.float32)))
        await next_message(ws, "session_created")
        await ws.send(json.dumps({"type": "end"}))
        await receive_until_close(ws)
        assert ws.close_code == 1000


async def test_oversized_frames_close_1009() -> None:
    async with running_daemon() as daemon:
        async with websockets.connect(ws_url(daemon), max_size=None) as ws:
            await ws.send(f32(np.zeros(1600, dtype=np.float32)))
            await next_message(ws, "session_created")
            await ws.send(b"\x00" * ((1 << 20) + 4))
            await receive_until_close(ws)
            assert ws.close_code == 1009
        for _ in range(50):
            if len(daemon.core.sessions) == 0:
                break
            await asyncio.sleep(0.05)
        assert len(daemon.core.sessions) == 0


async def test_a_client_still_sending_after_its_oversized_frame_reads_1009() -> None:
    """aiohttp closed the socket right after its Close, with the rest of the frame arriving: the
    reset made a client's next write fail before it read the Close, and it saw 1006. Before the
    daemon lingered after that Close, 99 or 100 of these 100 clients did in each of five runs."""
    async with running_daemon() as daemon:
        codes = [
            await asyncio.to_thread(
                close_code_after_oversized_frame, daemon.http_port, "/v1/stream", MAX_FRAME_BYTES + 4
            )
            for _ in range(100)
        ]
        await eventually(lambda: len(daemon.core.sessions) == 0, 10)
    assert codes == [1009] * 100, f"{codes.count(None)} of 100 closed without the Close"


async def test_a_client_that_answers_the_1009_is_let_go_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A websockets client answers the Close and waits for the server to end the connection (here
    for ever): the daemon ends it on reading that answer, not after its linger's time limit (here
    ten minutes, and as long for the first message, which cancels the linger)."""
    monkeypatch.setattr(protocols, "CLOSE_HANDSHAKE_S", 600.0)
    async with running_daemon(first_message_timeout_s=600) as daemon:
        for _ in range(5):
            async with websockets.connect(ws_url(daemon), max_size=None, compression=None, close_timeout=None) as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.send(bytes(MAX_FRAME_BYTES + 4))
                    await ws.recv()
                await asyncio.wait_for(ws.wait_closed(), 30)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009


async def test_a_lingering_close_keeps_its_connection_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linger after a refused frame keeps the TCP connection open on a duplicate of its socket
    once aiohttp has closed its own: it still counts against `max_http_connections` (which caps the
    connections open, whatever they do), until the linger ends; it was given back at aiohttp's close,
    and one address could hold its WebSocket cap of lingering connections over its HTTP cap."""
    monkeypatch.setattr(protocols, "CLOSE_HANDSHAKE_S", 600.0)
    async with running_daemon(first_message_timeout_s=600) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        try:
            answer = await websocket_upgrade(reader, writer, daemon.http_port, "/v1/stream")
            assert answer.startswith(b"HTTP/1.1 101 "), answer
            writer.write(struct.pack("!BBQ", 0x82, 0x80 | 127, MAX_FRAME_BYTES + 4) + bytes(4) + bytes(1000))
            frames = await read_server_frames_until_close(reader)
            assert struct.unpack("!H", frames[-1][1][:2]) == (1009,)
            # aiohttp has closed its transport and been told the connection is lost; the linger holds it
            await eventually(lambda: all(c.request.transport is None for c in daemon.websocket.open), 10)
            assert len(daemon.websocket.open) == 1
            assert len(daemon.http_connections) == 1
        finally:
            writer.close()
        await eventually(lambda: len(daemon.http_connections) == 0 and not daemon.websocket.open, 10)


def test_a_clients_answering_close_is_told_from_other_data() -> None:
    """What `linger` reads ends with the client's answer when its last frame is a Close with the
    server's code, reason or not, and with no other data (another code, a frame cut short)."""
    audio = bytes(range(256)) * 4
    answer = client_frame(struct.pack("!H", 1009), CLOSE_OPCODE)
    assert protocols.ends_with_close(audio + answer, 1009)
    assert protocols.ends_with_close(
        audio + client_frame(struct.pack("!H", 1009) + b"message too big", CLOSE_OPCODE), 1009
    )
    assert not protocols.ends_with_close(audio + client_frame(struct.pack("!H", 1000), CLOSE_OPCODE), 1009)
    assert not protocols.ends_with_close(audio + answer[:-1], 1009)
    assert not protocols.ends_with_close(audio + answer + client_frame(b"x", BINARY_OPCODE), 1009)
    assert not protocols.ends_with_close(answer[2:], 1009) and not protocols.ends_with_close(audio, 1009)


async def test_plain_http_to_the_stream_endpoint_says_to_use_a_websocket() -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{daemon.http_port}/v1/stream") as response:
            assert response.status == 426 and response.headers["Upgrade"] == "websocket"
            body = await response.json()
        assert body["type"] == "error" and body["code"] == "websocket_required"
        assert "WebSocket client" in body["message"]
        assert len(daemon.core.sessions) == 0


async def test_config_after_audio_is_locked() -> None:
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(f32(np.zeros(1600, dtype=np.float32)))
        await next_message(ws, "session_created")
        await ws.send(json.dumps({"type": "config", "sample_rate": 8000}))
        error = json.loads(await ws.recv())
        await ws.send(f32(fixture_16k("weather.wav")))
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    assert error["code"] == "config_locked"
    assert len(of_type(messages, "final")) == 1, "the session kept its settings and went on"


async def test_an_empty_frame_is_no_audio_and_leaves_the_config_open() -> None:
    import soxr

    pcm = (np.clip(soxr.resample(fixture_16k("weather.wav"), 16000, 8000), -1, 1) * 32767).astype("<i2").tobytes()
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(b"")
        await ws.send(json.dumps({"type": "config", "sample_rate": 8000, "encoding": "s16le"}))
        created = await next_message(ws, "session_created")
        await ws.send(pcm)
        await ws.send(json.dumps({"type": "end"}))
        messages = await receive_until_close(ws)
    assert created["config"]["sample_rate"] == 8000
    assert not of_type(messages, "error") and len(of_type(messages, "final")) == 1


async def test_max_sessions_refuses_with_server_busy_1013() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(ws_url(daemon)) as first,
    ):
        await first.send(json.dumps({"type": "config"}))
        await next_message(first, "session_created")
        async with websockets.connect(ws_url(daemon)) as second:
            await second.send(json.dumps({"type": "config"}))
            messages = await receive_until_close(second)
            assert second.close_code == 1013
        assert messages[0]["code"] == "server_busy"
        await first.send(f32(fixture_16k("lights_on.wav")))
        await first.send(json.dumps({"type": "end"}))
        assert len(of_type(await receive_until_close(first), "final")) == 1


async def test_disconnect_mid_utterance_releases_everything() -> None:
    audio = fixture_16k("music.wav")[: int(2.0 * 16000)]
    async with running_daemon() as daemon:
        tasks_before = len(asyncio.all_tasks())
        for _ in range(3):
            ws = await websockets.connect(ws_url(daemon))
            await ws.send(f32(audio))
            await next_message(ws, "speech_start")
            await ws.close()
        for _ in range(100):
            if len(daemon.core.sessions) == 0 and len(asyncio.all_tasks()) <= tasks_before:
                break
            await asyncio.sleep(0.05)
        assert len(daemon.core.sessions) == 0
        assert len(asyncio.all_tasks()) <= tasks_before, "no task left behind by the closed sessions"
        metrics = daemon.core.metrics.render().decode()
        assert 'satellite_asr_sessions_active{protocol="websocket"} 0.0' in metrics


@pytest.mark.parametrize("error", [EngineError, RuntimeError], ids=["EngineError", "any-exception"])
async def test_engine_error_hits_only_its_session(error: type[Exception]) -> None:
    async with running_daemon(CrashingEngineDouble(error)) as daemon:
        crash, fine = await asyncio.gather(
            stream_file(FIXTURES / "weather.wav", ws_url(daemon), fast=True, config={"context": "crash"}),
            stream_file(FIXTURES / "weather.wav", ws_url(daemon), fast=True),
        )
    errors = of_type(crash, "error")
    assert [e["code"] for e in errors] == ["engine_error"]
    assert len(of_type(crash, "final")) == 1, "the utterance still gets its one final"
    assert of_type(fine, "error") == []
    assert word_error_rate(EXPECTED["weather.wav"][0], of_type(fine, "final")[0]["text"]) <= WER_TOLERANCE


async def test_a_lone_surrogate_in_the_context_fails_no_decode() -> None:
    """JSON can escape half a UTF-16 pair; no tokenizer takes one, so it reaches the engine as U+FFFD."""
    async with running_daemon() as daemon:
        messages = await stream_file(
            FIXTURES / "weather.wav", ws_url(daemon), fast=True, config={"context": "Kitchen \udcff lamp"}
        )
        assert daemon.core.status == "ready"
    assert of_type(messages, "error") == []
    assert word_error_rate(EXPECTED["weather.wav"][0], of_type(messages, "final")[0]["text"]) <= WER_TOLERANCE


async def test_session_created_echoes_a_context_with_a_lone_surrogate_as_its_escape() -> None:
    """Strict JSON parsers refuse a message holding a lone surrogate: the echo writes it as its escape."""
    async with running_daemon() as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "context": "Kitchen \udcff lamp"}))
        created = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert created["type"] == "session_created", created
    assert created["config"]["context"] == "Kitchen \\udcff lamp"


async def test_idle_session_is_finalized_and_closed() -> None:
    audio = fixture_16k("music.wav")[: int(2.0 * 16000)]
    async with running_daemon(idle_timeout_s=1.0) as daemon, websockets.connect(ws_url(daemon)) as ws:
        await ws.send(f32(audio))
        messages = await receive_until_close(ws)
        assert ws.close_code == 1001
        assert len(daemon.core.sessions) == 0
    (final,) = of_type(messages, "final")
    assert final["is_speech_final"] is False and "music" in normalise(final["text"])


async def test_a_message_arriving_at_the_idle_timeout_is_taken_and_the_close_follows_it() -> None:
    """A message still arriving when `idle_timeout_s` runs out (a big frame on a slow link) was cut:
    the server closed as the client sent, and the client lost the Close to a reset. Once the timeout
    is past (a connection opened after it and sending nothing has been closed), the rest of its
    `config` is still taken (a new `session_created`), and the Close (1001) comes after it."""
    frame = client_frame(json.dumps({"type": "config", "context": "Kitchen"}).encode())
    async with running_daemon(idle_timeout_s=2.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port, "/v1/stream")
        writer.write(client_frame(json.dumps({"type": "config"}).encode()))
        _, created = await read_server_frame(reader)
        writer.write(frame[:12])
        async with websockets.connect(ws_url(daemon)) as idle:
            await idle.send(json.dumps({"type": "config"}))
            await receive_until_close(idle)  # session_created, then the idle timeout's Close
        writer.write(frame[12:])
        frames = await read_server_frames_until_close(reader)
        writer.close()
    assert json.loads(created)["type"] == "session_created" and idle.close_code == 1001
    assert [opcode for opcode, _ in frames] == [TEXT_OPCODE, CLOSE_OPCODE], frames
    recreated = json.loads(frames[0][1])
    assert recreated["type"] == "session_created" and recreated["config"]["context"] == "Kitchen", frames
    assert frames[-1][1] == (1001).to_bytes(2, "big") + b"idle_timeout", frames


async def test_shutdown_delivers_pending_finals() -> None:
    audio = fixture_16k("timer.wav")[: int(2.2 * 16000)]
    daemon = Daemon(daemon_settings())
    await daemon.start()
    await daemon.core.wait_ready()
    ws = await websockets.connect(ws_url(daemon))
    await ws.send(f32(audio))
    await next_message(ws, "speech_start")
    receiver = asyncio.create_task(receive_until_close(ws))
    await daemon.stop()
    messages = await receiver
    assert ws.close_code == 1001
    (final,) = of_type(messages, "final")
    assert "timer" in normalise(final["text"])


# --- HTTP ----------------------------------------------------------------------------------------


async def test_health_is_503_until_the_engine_is_ready_and_metrics_are_exported() -> None:
    engine = SlowLoadingEngineDouble()
    daemon = Daemon(daemon_settings(), engine=engine)
    await daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/health") as response:
                assert response.status == 503
                body = await response.json()
                assert body["ready"] is False and body["status"] == "loading" and body["engine"] == "whisper"
            engine.release.set()
            await daemon.core.wait_ready()
            async with http.get(url + "/health") as response:
                assert response.status == 200
                body = await response.json()
                assert body["ready"] is True and body["active_sessions"] == 0 and body["languages"] == ["en"]
            await stream_file(FIXTURES / "lights_on.wav", ws_url(daemon).replace("http", "ws"), fast=True)
            async with http.get(url + "/metrics") as response:
                text = await response.text()
    finally:
        await daemon.stop()
    for name in (
        "satellite_asr_sessions_total",
        "satellite_asr_endpoints_total",
        "satellite_asr_partial_latency_seconds_bucket",
        "satellite_asr_final_latency_seconds_count",
        "satellite_asr_decode_seconds_bucket",
        "satellite_asr_vad_seconds_total",
        "satellite_asr_audio_seconds_total",
    ):
        assert name in text
    assert (
        sum(f'satellite_asr_endpoints_total{{reason="{reason}"}} 1.0' in text for reason in ("complete", "silence"))
        == 1
    )


async def test_a_client_that_leaves_while_held_back_ends_its_session() -> None:
    """A client held back by back-pressure is not read, so its close waited behind its queued
    audio: that audio was decoded for nobody (131 s of it for 70 s in the abuse probe)."""
    second = f32(fixture_16k("three_commands.wav")[:16000])
    async with running_daemon(max_feed_ahead_s=1.0) as daemon:
        ws = await websockets.connect(ws_url(daemon), max_size=None, compression=None)
        await leave_while_throttled(daemon, ws.transport, lambda: ws.send(second))
