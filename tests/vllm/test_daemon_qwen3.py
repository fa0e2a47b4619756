"""The real daemon with `engine: qwen3-vllm` on the tiny checkpoint: WebSocket and Wyoming streams.

One daemon for the module (vLLM takes ~20 s to start on CPU). Random weights write junk, so the
tests check the events: partials while speaking, exactly one final per utterance, many sessions
batched on the one engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from wyoming.asr import Transcript, TranscriptChunk
from wyoming.client import AsyncTcpClient

from satellite_asr.clients.stream_client import stream_file
from satellite_asr.clients.wav import read_wav
from satellite_asr.clients.wyoming_bench import transcribe_like_home_assistant
from satellite_asr.engines.factory import auto_engine, create_engine
from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine, cuda_available, vllm_importable
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, FIXTURES, daemon_settings, of_type, running_daemon, ws_url
from tests.vllm.waiting import engine_processes, until

pytestmark = pytest.mark.timeout(300)
on_the_daemons_loop = pytest.mark.asyncio(loop_scope="module")


def qwen3_settings(model: Path) -> dict[str, Any]:
    return {
        "engine": "qwen3-vllm",
        "model": str(model),
        "wyoming_uri": "tcp://127.0.0.1:0",
        "vllm_dtype": "float32",
        "vllm_max_model_len": 1024,
        "vllm_max_num_seqs": 16,
        "vllm_enforce_eager": True,
        "vllm_kv_cache_bytes": 64 * 2**20,
        "qwen_max_new_tokens": 16,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(tiny_qwen3_asr: Path) -> AsyncIterator[Daemon]:
    """One for the module; the engine comes from the settings (the factory's path)."""
    async with running_daemon(**qwen3_settings(tiny_qwen3_asr)) as daemon:
        yield daemon


def test_gpu_and_vllm_detection() -> None:
    assert vllm_importable()
    assert cuda_available() == Path("/dev/nvidia0").exists()  # NVML agrees with the driver's device node


def test_settings_build_the_vllm_engine_and_auto_explains_itself(
    tiny_qwen3_asr: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(daemon_settings(**qwen3_settings(tiny_qwen3_asr)))
    assert isinstance(engine, Qwen3VllmEngine) and engine.info.max_concurrency == 16
    assert not engine.ready
    caplog.set_level(logging.INFO)
    name, reason = auto_engine()  # vLLM is installed here
    assert (name, reason) == (
        ("qwen3-vllm", "a CUDA GPU is present and vLLM is installed")
        if cuda_available()
        else ("whisper", "no CUDA GPU found")
    )
    create_engine(daemon_settings(engine="auto"))
    assert f"engine auto: using {name}: {reason}" in caplog.text


@on_the_daemons_loop
async def test_websocket_partials_and_exactly_one_final_per_utterance(daemon: Daemon) -> None:
    messages = await stream_file(FIXTURES / "three_commands.wav", ws_url(daemon))  # real-time pace
    created = messages[0]
    assert created["type"] == "session_created"
    assert created["config"]["engine"] == "qwen3-vllm" and len(created["config"]["languages"]) == 30
    finals = of_type(messages, "final")
    starts = of_type(messages, "speech_start")
    assert len(finals) == len(starts) == len(EXPECTED["three_commands.wav"])
    utterances = [f["utterance_id"] for f in finals]
    assert len(set(utterances)) == len(utterances) and [s["utterance_id"] for s in starts] == utterances
    partials = of_type(messages, "partial")
    assert partials and {p["utterance_id"] for p in partials} <= set(utterances)
    assert all(isinstance(f["text"], str) for f in finals)
    for utterance in utterances:  # a partial never follows its utterance's final
        kinds = [m["type"] for m in messages if m.get("utterance_id") == utterance]
        assert kinds.count("final") == 1 and kinds[-1] == "final", kinds


@on_the_daemons_loop
async def test_wyoming_round_streams_and_ends_with_one_transcript(daemon: Daemon) -> None:
    assert daemon.wyoming_port is not None
    wav = read_wav(FIXTURES / "lights_on.wav")
    async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
        result = await transcribe_like_home_assistant(client, wav, realtime=False)
    kinds = [event.type for _, event in result.events if event.type != "transcript-chunk"]
    assert kinds == ["voice-started", "transcript-start", "voice-stopped", "transcript"], kinds
    chunks = "".join(TranscriptChunk.from_event(e).text for e in result.of_type("transcript-chunk"))
    transcript = Transcript.from_event(result.transcript or Transcript("").event())
    assert transcript.text.startswith(chunks)


def steps_batching_more_than(daemon: Daemon, size: int) -> float:
    """vLLM steps that ran more than `size` decodes together, from the daemon's own metrics."""
    value = daemon.core.metrics.registry.get_sample_value
    name = "satellite_asr_engine_batch_size"
    return (value(f"{name}_count") or 0.0) - (value(f"{name}_bucket", {"le": f"{size:.1f}"}) or 0.0)


@on_the_daemons_loop
async def test_eight_sessions_share_the_engine_and_are_batched(daemon: Daemon) -> None:
    assert isinstance(daemon.core.engine, Qwen3VllmEngine)
    url, wav = ws_url(daemon), FIXTURES / "lights_on.wav"
    one = await stream_file(wav, url, fast=True)
    before = steps_batching_more_than(daemon, 4)
    eight = await asyncio.gather(*(stream_file(wav, url, fast=True) for _ in range(8)))
    assert len(of_type(one, "final")) == 1
    assert [len(of_type(messages, "final")) for messages in eight] == [1] * 8
    # Decodes of several sessions ran in the same vLLM steps (the speed-up that buys on a GPU is
    # in docs/benchmarks.md; on CPU the daemon's own per-session work dominates the wall time).
    assert steps_batching_more_than(daemon, 4) > before
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.http_port}/metrics") as response:
        assert "satellite_asr_engine_batch_size_bucket" in await response.text()


@pytest.mark.asyncio
async def test_stopping_while_vllm_loads_leaves_no_engine_process(tiny_qwen3_asr: Path) -> None:
    others = engine_processes()  # e.g. the module's daemon
    daemon = Daemon(daemon_settings(**qwen3_settings(tiny_qwen3_asr)))
    await daemon.start()
    await daemon.stop()  # the load goes on in a worker thread that cannot be interrupted
    assert not daemon.core.engine.ready
    await until(lambda: bool(engine_processes() - others), interval_s=0.2)  # the load got as far as the engine...
    await until(lambda: not engine_processes() - others, interval_s=0.2)  # ...which is shut down once it exists
