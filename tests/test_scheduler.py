"""Scheduling rules, with a recording engine-stream double whose decodes the test releases."""

from __future__ import annotations

import asyncio

import numpy as np

from satellite_asr.audio import Audio
from satellite_asr.engines.base import EngineStream, Transcript
from satellite_asr.metrics import Metrics
from satellite_asr.scheduler import BATCH, DecodeScheduler, PartialRequests


class GatedStreamDouble(EngineStream):
    """Records each decode's kind and audio length; a decode finishes when the test opens the gate."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name
        self.gate = asyncio.Event()
        self.started = 0

    async def _decode(self, kind: str, audio: Audio) -> Transcript:
        self.started += 1
        self.log.append(f"{self.name}:{kind}:{audio.size}")
        await self.gate.wait()
        return Transcript(text=f"{kind} {audio.size}")

    async def partial(self, audio: Audio) -> Transcript:
        return await self._decode("partial", audio)

    async def final(self, audio: Audio) -> Transcript:
        return await self._decode("final", audio)


def audio(n: int) -> Audio:
    return np.zeros(n, dtype=np.float32)


def ready_engine() -> asyncio.Event:
    """The readiness signal of an engine that has loaded."""
    loaded = asyncio.Event()
    loaded.set()
    return loaded


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_finals_go_before_waiting_partials() -> None:
    scheduler = DecodeScheduler(slots=1, metrics=Metrics(), engine_ready=ready_engine())
    log: list[str] = []
    busy, a, b = GatedStreamDouble(log, "busy"), GatedStreamDouble(log, "a"), GatedStreamDouble(log, "b")
    first = asyncio.create_task(scheduler.final("busy", busy, audio(1)))
    await settle()
    partial = asyncio.create_task(scheduler.partial("a", a, lambda: audio(2)))
    await settle()
    final = asyncio.create_task(scheduler.final("b", b, audio(3)))
    await settle()
    for stream in (busy, a, b):
        stream.gate.set()
    await asyncio.gather(first, partial, final)
    assert log == ["busy:final:1", "b:final:3", "a:partial:2"]


async def test_the_session_that_used_the_engine_least_goes_first_and_finals_still_go_first() -> None:
    """One slot; `flood` has decoded and queues three finals before `live` queues one: `live`
    goes next, `flood`'s own finals keep their order, and its partial waits for every final."""
    scheduler = DecodeScheduler(slots=1, metrics=Metrics(), engine_ready=ready_engine())
    log: list[str] = []
    busy = GatedStreamDouble(log, "busy")
    flood = [GatedStreamDouble(log, f"flood{i}") for i in range(3)]
    live = GatedStreamDouble(log, "live")
    partial = GatedStreamDouble(log, "partial")
    tasks = [asyncio.create_task(scheduler.final("flood", busy, audio(1)))]
    await settle()
    tasks.append(asyncio.create_task(scheduler.partial("flood", partial, lambda: audio(9))))
    for stream in flood:
        tasks.append(asyncio.create_task(scheduler.final("flood", stream, audio(2))))
    await settle()
    tasks.append(asyncio.create_task(scheduler.final("live", live, audio(3))))
    await settle()
    assert scheduler.waiting("flood") == 4 and scheduler.waiting("live") == 1
    for stream in [busy, partial, live, *flood]:
        stream.gate.set()
    await asyncio.gather(*tasks)
    assert [entry.split(":")[0] for entry in log] == ["busy", "live", "flood0", "flood1", "flood2", "partial"]


async def test_equal_sessions_take_turns() -> None:
    """Sessions that have not used the engine lately are served in turn, one decode each."""
    scheduler = DecodeScheduler(slots=1, metrics=Metrics(), engine_ready=ready_engine())
    log: list[str] = []
    busy = GatedStreamDouble(log, "busy")
    streams = {name: [GatedStreamDouble(log, f"{name}{i}") for i in range(2)] for name in ("a", "b")}
    tasks = [asyncio.create_task(scheduler.final("other", busy, audio(1)))]
    await settle()
    for name in ("a", "b"):
        for stream in streams[name]:
            tasks.append(asyncio.create_task(scheduler.final(name, stream, audio(1))))
    await settle()
    busy.gate.set()
    for stream in [s for pair in streams.values() for s in pair]:
        stream.gate.set()
    await asyncio.gather(*tasks)
    order = [entry.split(":")[0] for entry in log]
    assert order[:2] == ["busy", "a0"] and order[2] == "b0", "b gets its turn before a's second decode"


async def test_decodes_wait_for_the_engine() -> None:
    engine_ready = asyncio.Event()
    scheduler = DecodeScheduler(slots=2, metrics=Metrics(), engine_ready=engine_ready)
    stream = GatedStreamDouble([], "s")
    stream.gate.set()
    task = asyncio.create_task(scheduler.final("s", stream, audio(1)))
    await settle()
    assert stream.started == 0
    engine_ready.set()
    assert (await task).text == "final 1"


async def test_one_partial_in_flight_and_requests_coalesce_to_the_newest_audio() -> None:
    metrics = Metrics()
    scheduler = DecodeScheduler(slots=4, metrics=metrics, engine_ready=ready_engine())
    log: list[str] = []
    stream = GatedStreamDouble(log, "s")
    samples = [1000]
    results: list[str] = []

    async def run_partial() -> None:
        results.append((await scheduler.partial("s", stream, lambda: audio(samples[0]))).text)

    requests = PartialRequests(run_partial, metrics)
    requests.request()
    await settle()
    for size in (2000, 3000, 4000):  # three requests while the first decodes
        samples[0] = size
        requests.request()
        await settle()
    assert stream.started == 1, "never two partials of one session at once"
    stream.gate.set()
    for _ in range(200):
        if len(results) == 2:
            break
        await asyncio.sleep(0.01)
    assert log == ["s:partial:1000", "s:partial:4000"], "superseded requests are skipped, the newest audio wins"
    assert results == ["partial 1000", "partial 4000"]
    assert "satellite_asr_partials_skipped_total 2.0" in metrics.render().decode(), "2000 and 3000 were skipped"


async def test_cancelling_partials_frees_the_slot() -> None:
    metrics = Metrics()
    scheduler = DecodeScheduler(slots=1, metrics=metrics, engine_ready=ready_engine())
    stuck = GatedStreamDouble([], "stuck")

    async def run_partial() -> None:
        await scheduler.partial("stuck", stuck, lambda: audio(1))

    requests = PartialRequests(run_partial, metrics)
    requests.request()
    await settle()
    await requests.cancel()
    other = GatedStreamDouble([], "other")
    other.gate.set()
    result = await asyncio.wait_for(scheduler.final("other", other, audio(5)), 5)
    assert result.text == "final 5"


async def test_batch_finals_wait_behind_live_partials_and_finals() -> None:
    scheduler = DecodeScheduler(slots=1, metrics=Metrics(), engine_ready=ready_engine())
    log: list[str] = []
    busy, upload, live = (
        GatedStreamDouble(log, "busy"),
        GatedStreamDouble(log, "upload"),
        GatedStreamDouble(log, "live"),
    )
    first = asyncio.create_task(scheduler.final("busy", busy, audio(1)))
    await settle()
    batch = asyncio.create_task(scheduler.final("upload", upload, audio(2), BATCH))
    await settle()
    partial = asyncio.create_task(scheduler.partial("live", live, lambda: audio(3)))
    await settle()
    final = asyncio.create_task(scheduler.final("live", live, audio(4)))
    await settle()
    for stream in (busy, upload, live):
        stream.gate.set()
    await asyncio.gather(first, batch, partial, final)
    assert log == ["busy:final:1", "live:final:4", "live:partial:3", "upload:final:2"]
