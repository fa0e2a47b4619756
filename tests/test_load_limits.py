"""Fair and bounded: decode slots shared between sessions, back-pressure on a client that sends
faster than real time, and a session's audio bounded whatever its frame sizes.

Real daemon, real Silero, real whisper; the only double holds finals until the test lets them go
(`GatedEngineDouble`), so the order the scheduler grants them in can be read, never timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import websockets

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SessionEvent
from satellite_asr.server import Daemon
from satellite_asr.session import FEED_PIECE, Session, SessionOptions
from tests.doubles import GatedEngineDouble
from tests.helpers import daemon_settings, fixture_16k, running_daemon, ws_url

pytestmark = pytest.mark.timeout(180)


def f32(audio: Audio) -> bytes:
    return audio.astype("<f4").tobytes()


async def until(condition: Any, what: str) -> None:
    """Waits for `condition()`; the bound only turns a hang into a failure."""
    for _ in range(1200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def session_with_context(daemon: Daemon, context: str) -> Session | None:
    return next((s for s in daemon.core.sessions.open_sessions() if s.options.context == context), None)


async def send_all(url: str, config: dict[str, Any], audio: Audio, received: list[dict[str, Any]]) -> None:
    """A client that sends its whole file at once in 1 s frames, then `end`, and reads everything."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "config", **config}))

        async def receive() -> None:
            async for raw in ws:
                received.append(json.loads(raw))

        reader = asyncio.create_task(receive())
        for offset in range(0, audio.size, SAMPLE_RATE):
            await ws.send(f32(audio[offset : offset + SAMPLE_RATE]))
        await ws.send(json.dumps({"type": "end"}))
        await reader


async def test_a_flooding_session_gets_one_decode_per_turn_and_is_held_back() -> None:
    """A client sending 9 commands at once queues at most `max_pending_finals` finals and then is
    not read; a session that ends an utterance meanwhile has its final decoded before the
    flooding session's second pending one (first-in-first-out would put it after all of them)."""
    engine = GatedEngineDouble()
    flood_audio = np.tile(fixture_16k("three_commands.wav"), 3)
    flood_messages: list[dict[str, Any]] = []
    cap = 3
    async with running_daemon(engine, max_pending_finals=cap) as daemon:
        flood = asyncio.create_task(
            send_all(ws_url(daemon), {"context": "flood", "partials": False}, flood_audio, flood_messages)
        )

        def flood_blocked() -> bool:
            session = session_with_context(daemon, "flood")
            return session is not None and session.pending_finals == cap

        await until(flood_blocked, "the flooding session has max_pending_finals finals pending")
        flood_session = session_with_context(daemon, "flood")
        assert flood_session is not None
        received = flood_session.samples_received
        await asyncio.sleep(0.5)  # not a timing assertion: nothing may arrive while it is held
        assert flood_session.pending_finals == cap, "never more than max_pending_finals"
        assert flood_session.samples_received == received < flood_audio.size, "its audio is not read meanwhile"

        live_messages: list[dict[str, Any]] = []
        live = asyncio.create_task(
            send_all(
                ws_url(daemon), {"context": "live", "partials": False}, fixture_16k("lights_on.wav"), live_messages
            )
        )

        def live_waits() -> bool:
            session = session_with_context(daemon, "live")
            return session is not None and daemon.core.scheduler.waiting(session.id) > 0

        await until(live_waits, "the live session's final waits for a decode slot")
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(live, flood), 120)

    assert engine.finals.index("live") < 3, f"granted before the flood's 2nd pending final: {engine.finals}"
    assert [m["utterance_id"] for m in flood_messages if m["type"] == "final"] == list(range(1, 10))
    assert [m["type"] for m in live_messages].count("final") == 1


@asynccontextmanager
async def running_core(**overrides: Any) -> AsyncIterator[Core]:
    core = Core(daemon_settings(**overrides))
    await core.start()
    try:
        await core.wait_ready()
        yield core
    finally:
        await core.close()


def open_test_session(core: Core, finals: list[FinalTranscript], **options: Any) -> Session:
    async def collect(event: SessionEvent) -> None:
        if isinstance(event, FinalTranscript):
            finals.append(event)

    async def no_connection(reason: str) -> None:
        return None

    defaults = SessionOptions.from_settings(core.settings, partials=False, language="en")
    return core.sessions.create("test", dataclasses.replace(defaults, **options), collect, no_connection)


def voiced_only(audio: Audio) -> Audio:
    """The speech of a fixture without its pauses: 32 ms windows louder than a tenth of the loudest."""
    windows = audio[: audio.size // 512 * 512].reshape(-1, 512)
    loudness = np.sqrt((windows**2).mean(axis=1))
    return windows[loudness > 0.1 * loudness.max()].reshape(-1)


async def test_audio_held_stays_bounded_whatever_the_frame_size() -> None:
    """Frames of 16 s of continuous speech: the session holds at most `max_utterance_s`, the
    pre-roll and one feed step, not everything since the last pause."""
    speech = np.concatenate([voiced_only(fixture_16k(n)) for n in ("lights_on.wav", "weather.wav", "timer.wav")])
    frame = np.tile(speech, int(np.ceil(16 * SAMPLE_RATE / speech.size)))[: 16 * SAMPLE_RATE]
    finals: list[FinalTranscript] = []
    async with running_core(max_utterance_s=2.0, silence_ms=10000) as core:
        session = open_test_session(core, finals, max_feed_ahead_s=None)
        bound = 2.0 + session.options.endpointing.speech_pad_ms / 1000 + 2.0 + FEED_PIECE / SAMPLE_RATE
        held = []
        for _ in range(4):
            await session.feed(frame)
            held.append(session.buffered_seconds)
        assert session.in_utterance, "the speech goes on across frames"
        await core.sessions.release(session, "end", finalize=True)
    assert max(held) <= bound, f"held {held} s, bound {bound:.1f} s"
    assert len(finals) >= 4 * 16 / 2.5, "the length cap ended the utterances (each gets its final)"


async def test_audio_ahead_of_real_time_is_read_at_real_time_pace() -> None:
    """With `max_feed_ahead_s` 1, 4 s of audio given at once is taken no sooner than real time
    allows (the check is a lower bound: a slow machine only makes it truer)."""
    audio = fixture_16k("timer.wav")[: 4 * SAMPLE_RATE]
    async with running_core() as core:
        session = open_test_session(core, [], max_feed_ahead_s=1.0)
        started = time.monotonic()
        await session.feed(audio)
        elapsed = time.monotonic() - started
        await core.sessions.release(session, "end", finalize=True)
    assert elapsed >= 4.0 - 1.0 - FEED_PIECE / SAMPLE_RATE, f"4 s of audio taken in {elapsed:.2f} s"
