"""Soak load: many sessions through many utterances, with disconnects and bad frames mixed in.

Both the CI soak test (`tests/test_soak.py`) and the long soak script (`scripts/soak`) run these
rounds against a daemon and check that what the daemon holds (sessions, tasks, file descriptors,
memory) comes back to where it was.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field

import websockets
from websockets.exceptions import ConnectionClosed
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import async_read_event, async_write_event

from satellite_asr.audio import SAMPLE_RATE, Audio, to_pcm16

FRAME = SAMPLE_RATE // 10
"""100 ms frames, sent without waiting (faster than real time, within `max_feed_ahead_s`)."""
BEHAVIOURS = ("complete", "disconnect", "bad_frames", "wyoming", "wyoming_disconnect")


@dataclass
class RoundResult:
    finals: int = 0
    """Finals (WebSocket) and transcripts (Wyoming) received by the clients that asked for them."""
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


async def soak_round(url: str, wyoming_port: int, audios: list[Audio], clients: int, index: int) -> RoundResult:
    """`clients` sessions at once, each with the next behaviour in `BEHAVIOURS` and the next audio."""
    result = RoundResult()
    jobs = []
    for client in range(clients):
        behaviour = BEHAVIOURS[(index + client) % len(BEHAVIOURS)]
        audio = audios[(index + client) % len(audios)]
        if behaviour.startswith("wyoming"):
            jobs.append(_wyoming(wyoming_port, audio, behaviour, result))
        else:
            jobs.append(_websocket(url, audio, behaviour, result))
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
    """Rounds against an in-process daemon for `minutes`; one report line per minute."""
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
        url = f"ws://127.0.0.1:{daemon.http_port}/v1/stream"
        started = next_report = time.monotonic()
        rounds = finals = problems = 0
        while time.monotonic() - started < minutes * 60:
            result = await soak_round(url, daemon.wyoming_port, audios, clients, rounds)
            rounds, finals, problems = rounds + 1, finals + result.finals, problems + len(result.problems)
            if time.monotonic() >= next_report:
                next_report += 60
                gc.collect()
                line = (
                    f"{(time.monotonic() - started) / 60:5.1f} min  rounds {rounds:5d}  finals {finals:6d}  "
                    f"problems {problems}  sessions {len(daemon.core.sessions)}  tasks {len(asyncio.all_tasks())}  "
                    f"fds {open_fds()}  RSS {rss_mib():.0f} MiB"
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
