"""Soak load: many sessions through many utterances, with disconnects and bad frames mixed in.

Both the CI soak test (`tests/test_soak.py`) and the long soak script (`scripts/soak`) run these
rounds against a daemon and check that what the daemon holds (sessions, tasks, file descriptors,
memory) comes back to where it was. A round speaks every protocol the daemon serves: the
WebSocket protocol, Wyoming, OpenAI Realtime and OpenAI REST uploads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import soxr
import websockets
from websockets.exceptions import ConnectionClosed
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import async_read_event, async_write_event

from satellite_asr.audio import SAMPLE_RATE, Audio, to_pcm16
from satellite_asr.clients.rest_bench import wav_bytes

FRAME = SAMPLE_RATE // 10
"""100 ms frames, sent without waiting (faster than real time, within `max_feed_ahead_s`)."""
BEHAVIOURS = (
    "complete",
    "disconnect",
    "bad_frames",
    "wyoming",
    "wyoming_disconnect",
    "realtime",
    "realtime_disconnect",
    "realtime_bad_events",
    "rest",
    "rest_disconnect",
)
REALTIME_RATE = 24000
"""OpenAI's pcm16 rate, the Realtime default: the daemon resamples it to 16 kHz."""
REALTIME_SESSION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        }
    },
}
"""The SDK's GA session update (docs/openai.md): it changes the endpointing, so the daemon replaces
the session it opened at connect."""
REALTIME_BAD_EVENTS: tuple[tuple[str | bytes, str], ...] = (
    ("{", "invalid_json"),
    ('{"type": "nonsense"}', "invalid_value"),
    ('{"type": "input_audio_buffer.append", "audio": "not base64!"}', "invalid_value"),
    ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio"),  # 3 bytes: not whole samples
    (b"\x01\x02\x03", "invalid_value"),  # events are text
)
"""Events the daemon refuses with an `error` (its code here) and goes on."""
UPLOAD_BOUNDARY = "satellite-asr-soak"


@dataclass
class RoundResult:
    finals: int = 0
    """Finals (WebSocket), transcripts (Wyoming, REST) and non-empty `completed` (Realtime) received."""
    problems: list[str] = field(default_factory=list)
    """What went wrong: a complete session without its finals, an unexpected close code."""


def _f32(audio: Audio) -> bytes:
    return audio.astype("<f4").tobytes()


async def _websocket(url: str, audio: Audio, behaviour: str, result: RoundResult) -> None:
    async with websockets.connect(url, max_size=1 << 20) as ws:
        if behaviour == "bad_frames":
            for bad in ("{", '{"type": "nonsense"}', '{"type": "config", "encoding": []}'):
                await ws.send(bad)
            await ws.send(b"\x01\x02\x03")  # not a whole number of samples
        else:
            await ws.send(json.dumps({"type": "config", "partials": True}))
        frames = range(0, audio.size, FRAME)
        cut = len(frames) // 2 if behaviour == "disconnect" else len(frames)
        for offset in list(frames)[:cut]:
            await ws.send(_f32(audio[offset : offset + FRAME]))
        if behaviour == "disconnect":
            ws.transport.abort()  # gone without a word, mid-utterance
            return
        await ws.send(json.dumps({"type": "end"}))
        messages = []
        try:
            async for raw in ws:
                messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
    finals = [m for m in messages if m["type"] == "final"]
    starts = [m for m in messages if m["type"] == "speech_start"]
    result.finals += len(finals)
    if behaviour == "bad_frames":  # the invalid config ends the connection with 1008
        if ws.close_code != 1008:
            result.problems.append(f"bad_frames: close {ws.close_code}, expected 1008")
    elif ws.close_code != 1000 or not finals or len(finals) != len(starts):
        result.problems.append(f"complete: close {ws.close_code}, {len(finals)} finals for {len(starts)} utterances")


async def _wyoming(port: int, audio: Audio, behaviour: str, result: RoundResult) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await async_write_event(Transcribe(language="en").event(), writer)
        await async_write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event(), writer)
        pcm = to_pcm16(audio)
        chunks = range(0, pcm.size, FRAME)
        cut = len(chunks) // 2 if behaviour == "wyoming_disconnect" else len(chunks)
        for offset in list(chunks)[:cut]:
            chunk = AudioChunk(rate=SAMPLE_RATE, width=2, channels=1, audio=pcm[offset : offset + FRAME].tobytes())
            await async_write_event(chunk.event(), writer)
        if behaviour == "wyoming_disconnect":
            writer.transport.abort()
            return
        await async_write_event(AudioStop().event(), writer)
        while (event := await async_read_event(reader)) is not None:
            if event.type == "transcript":
                result.finals += 1
                return
        result.problems.append("wyoming: the round ended without a transcript")
    finally:
        writer.close()


def _append(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


async def _realtime(url: str, audio: Audio, behaviour: str, result: RoundResult) -> None:
    """A Realtime session: complete (a commit ends the last item, a clear after it marks the end of
    its events), cut mid-utterance, or with refused events before half the audio."""
    pcm = to_pcm16(soxr.resample(audio, SAMPLE_RATE, REALTIME_RATE)).tobytes()
    step = REALTIME_RATE // 10 * 2
    offsets = range(0, len(pcm), step)
    cut = len(offsets) if behaviour == "realtime" else len(offsets) // 2
    async with websockets.connect(url, max_size=1 << 20) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": REALTIME_SESSION}))
        if behaviour == "realtime_bad_events":
            for bad, _ in REALTIME_BAD_EVENTS:
                await ws.send(bad)
        for offset in offsets[:cut]:
            await ws.send(_append(pcm[offset : offset + step]))
        if behaviour == "realtime_disconnect":
            ws.transport.abort()
            return
        if behaviour == "realtime":
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        events: list[dict[str, Any]] = []
        async for raw in ws:
            events.append(json.loads(raw))
            if events[-1]["type"] == "input_audio_buffer.cleared":
                break
    _check_realtime(events, behaviour, ws.close_code, result)


def _check_realtime(events: list[dict[str, Any]], behaviour: str, close_code: int | None, result: RoundResult) -> None:
    """Every item whose speech started completed, and only the expected errors came (a commit of
    under 100 ms of audio after the last item is refused, and that depends on the file's tail)."""
    kinds = [event["type"] for event in events]
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    errors = [e["error"]["code"] for e in events if e["type"] == "error"]
    result.finals += sum(1 for event in completed if event["transcript"])
    if "input_audio_buffer.cleared" not in kinds or close_code != 1000:
        result.problems.append(f"{behaviour}: close {close_code}, ended after {kinds[-3:]}")
    if behaviour == "realtime_bad_events":
        if errors != [code for _, code in REALTIME_BAD_EVENTS]:
            result.problems.append(f"realtime_bad_events: errors {errors}")
        return
    started = {e["item_id"] for e in events if e["type"] == "input_audio_buffer.speech_started"}
    unfinished = started - {event["item_id"] for event in completed}
    if set(errors) - {"input_audio_buffer_commit_empty"} or unfinished or not any(e["transcript"] for e in completed):
        result.problems.append(f"realtime: errors {errors}, {len(unfinished)} items without a transcript")


def _upload_body(wav: bytes) -> bytes:
    """The multipart form of `POST /v1/audio/transcriptions`, as bytes to cut where we like."""
    head = (
        f'--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="soak.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    return head.encode() + wav + f"\r\n--{UPLOAD_BOUNDARY}--\r\n".encode()


async def _rest(port: int, audio: Audio, behaviour: str, result: RoundResult) -> None:
    """An upload transcribed whole, or one whose connection is aborted halfway through its body."""
    wav = wav_bytes(audio)
    if behaviour == "rest_disconnect":
        await _cut_upload(port, _upload_body(wav))
        return
    form = aiohttp.FormData({"model": "whisper-1", "response_format": "json"})
    form.add_field("file", wav, filename="soak.wav", content_type="audio/wav")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", data=form) as response,
    ):
        body = await response.json()
    if response.status != 200 or not body.get("text"):
        result.problems.append(f"rest: {response.status} {body}")
    else:
        result.finals += 1


async def _cut_upload(port: int, body: bytes) -> None:
    """Half the body, sent once the daemon has taken the request (its `100 Continue`), then the
    connection aborted: the handler is reading the form when the client goes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nExpect: 100-continue\r\n"
            f"Content-Type: multipart/form-data; boundary={UPLOAD_BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 100 " not in status:
            raise RuntimeError(f"rest_disconnect: expected 100 Continue, got {status!r}")
        await reader.readline()  # the blank line that ends the interim response
        writer.write(body[: len(body) // 2])
        await writer.drain()
    finally:
        writer.transport.abort()


async def soak_round(http_port: int, wyoming_port: int, audios: list[Audio], clients: int, index: int) -> RoundResult:
    """`clients` sessions at once, each with the next behaviour in `BEHAVIOURS` and the next audio."""
    result = RoundResult()
    jobs = []
    for client in range(clients):
        behaviour = BEHAVIOURS[(index + client) % len(BEHAVIOURS)]
        audio = audios[(index + client) % len(audios)]
        if behaviour.startswith("wyoming"):
            jobs.append(_wyoming(wyoming_port, audio, behaviour, result))
        elif behaviour.startswith("realtime"):
            jobs.append(_realtime(f"ws://127.0.0.1:{http_port}/v1/realtime", audio, behaviour, result))
        elif behaviour.startswith("rest"):
            jobs.append(_rest(http_port, audio, behaviour, result))
        else:
            jobs.append(_websocket(f"ws://127.0.0.1:{http_port}/v1/stream", audio, behaviour, result))
    for outcome in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(outcome, BaseException):
            result.problems.append(f"client failed: {outcome!r}")
    return result


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def run_soak(fixtures: list[str], minutes: float, clients: int) -> list[str]:
    """Rounds against an in-process daemon for `minutes`; one report line per minute (the load
    average with it: the machine may be shared), and each problem as it happens."""
    import gc
    import time

    from satellite_asr.clients.wav import read_wav
    from satellite_asr.config import load_settings
    from satellite_asr.server import in_process_daemon

    settings = load_settings(
        None,
        environ={},
        overrides={"host": "127.0.0.1", "http_port": 0, "wyoming_uri": "tcp://127.0.0.1:0", "zeroconf": False},
    )
    audios = [read_wav(path).to_16k_mono() for path in fixtures]
    lines = []
    async with in_process_daemon(settings) as daemon:
        assert daemon.wyoming_port is not None
        started = next_report = time.monotonic()
        rounds = finals = problems = 0
        while time.monotonic() - started < minutes * 60:
            result = await soak_round(daemon.http_port, daemon.wyoming_port, audios, clients, rounds)
            rounds, finals, problems = rounds + 1, finals + result.finals, problems + len(result.problems)
            for problem in result.problems:  # what went wrong, not only how often
                print(f"round {rounds}: {problem}", flush=True)
            if time.monotonic() >= next_report:
                next_report += 60
                gc.collect()
                line = (
                    f"{(time.monotonic() - started) / 60:5.1f} min  rounds {rounds:5d}  finals {finals:6d}  "
                    f"problems {problems}  sessions {len(daemon.core.sessions)}  tasks {len(asyncio.all_tasks())}  "
                    f"fds {open_fds()}  RSS {rss_mib():.0f} MiB  load {os.getloadavg()[0]:.2f}"
                )
                print(line, flush=True)
                lines.append(line)
    return lines


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Soak an in-process daemon; prints one line per minute.")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8, help="Sessions per round, all at once.")
    parser.add_argument(
        "fixtures",
        nargs="*",
        default=["tests/fixtures/three_commands.wav", "tests/fixtures/weather.wav", "tests/fixtures/timer.wav"],
    )
    args = parser.parse_args()
    asyncio.run(run_soak(args.fixtures, args.minutes, args.clients))


if __name__ == "__main__":
    main()
