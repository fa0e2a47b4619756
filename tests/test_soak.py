"""A CI-sized soak: rounds of sessions on every protocol (WebSocket, Wyoming, OpenAI Realtime and
REST) with disconnects, cut uploads and bad frames mixed in;
afterwards every session, task and file descriptor is released and memory has stayed flat.
The long version is `scripts/soak` (numbers in docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from satellite_asr.clients.soak import BEHAVIOURS, open_fds, rss_mib, soak_round
from satellite_asr.clients.wav import read_wav
from satellite_asr.session import Session
from tests.helpers import FIXTURES, running_daemon

pytestmark = pytest.mark.timeout(400)

ROUNDS, CLIENTS = 30, 6
RSS_GROWTH_MIB = 40
"""Allowed growth from the end of the warm-up round to the end: allocator noise, not a leak (the
leaks this guards against grew ~500 MiB a minute)."""


async def test_many_sessions_with_disconnects_and_bad_frames_release_everything() -> None:
    audios = [read_wav(FIXTURES / name).to_16k_mono() for name in ("three_commands.wav", "weather.wav", "timer.wav")]
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", log_level="INFO") as daemon:
        assert daemon.wyoming_port is not None
        http_port, port = daemon.http_port, daemon.wyoming_port
        # every behaviour once, so what each first use allocates (decode threads, PyAV) is in the baseline
        warm_up = await soak_round(http_port, port, audios, len(BEHAVIOURS), 0)
        assert not warm_up.problems, warm_up.problems
        await asyncio.sleep(0.5)  # the sessions of the cut connections are released as their tasks end
        gc.collect()
        tasks, fds, rss = len(asyncio.all_tasks()), open_fds(), rss_mib()
        finals = 0
        for index in range(1, ROUNDS):
            result = await soak_round(http_port, port, audios, CLIENTS, index)
            assert not result.problems, (index, result.problems)
            finals += result.finals
        for _ in range(200):  # the handlers of the last round's cut connections end as they see them go
            if len(daemon.core.sessions) == 0 and len(asyncio.all_tasks()) <= tasks and open_fds() <= fds:
                break
            await asyncio.sleep(0.05)
        assert len(daemon.core.sessions) == 0, "every session released"
        gc.collect()
        assert sum(type(o) is Session for o in gc.get_objects()) == 0, "no session object kept alive"
        assert len(asyncio.all_tasks()) <= tasks, "no task left behind"
        assert open_fds() <= fds, "no file descriptor left open"
        assert rss_mib() - rss <= RSS_GROWTH_MIB, f"RSS {rss:.0f} -> {rss_mib():.0f} MiB"
    assert finals >= ROUNDS * 2, "the complete sessions were transcribed"
