"""A broken engine: `/health` says so (503), every utterance still gets its final, and a restart
with backoff brings the engine back. Real daemon, real whisper inside a breakable double."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from satellite_asr import core
from satellite_asr.clients.stream_client import stream_file
from tests.doubles import BreakableEngineDouble, UnreachableEngineDouble
from tests.helpers import EXPECTED, FIXTURES, WER_TOLERANCE, of_type, running_daemon, word_error_rate, ws_url

pytestmark = pytest.mark.timeout(180)


async def health_once(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def health_when(
    http: aiohttp.ClientSession, url: str, wanted: Callable[[dict[str, Any]], bool]
) -> tuple[int, dict[str, Any]]:
    """Polls `/health` until `wanted(body)`; the bound is only there to fail instead of hanging."""
    for _ in range(600):
        status, body = await health_once(http, url)
        if wanted(body):
            return status, body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health never got there; last answer {status} {body}")


async def test_a_broken_engine_turns_health_503_loses_no_final_and_is_restarted() -> None:
    engine = BreakableEngineDouble()
    async with running_daemon(engine) as daemon, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}/health"
        assert (await health_once(http, url))[0] == 200
        engine.broken = True
        broken = await stream_file(FIXTURES / "three_commands.wav", ws_url(daemon), fast=True)
        assert len(of_type(broken, "final")) == len(of_type(broken, "speech_start")) == 3, "one final per utterance"
        assert {e["code"] for e in of_type(broken, "error")} == {"engine_error"}

        status, body = await health_when(http, url, lambda body: body["status"] == "broken")
        assert status == 503 and body["ready"] is False

        engine.restart_allowed.set()
        status, body = await health_when(http, url, lambda body: body["status"] == "ready")
        assert status == 200 and body["ready"] is True
        assert engine.starts == 2, "loaded, then restarted once"
        assert "satellite_asr_engine_restarts_total 1.0" in daemon.core.metrics.render().decode()
        mended = await stream_file(FIXTURES / "weather.wav", ws_url(daemon), fast=True)
    assert of_type(mended, "error") == []
    assert word_error_rate(EXPECTED["weather.wav"][0], of_type(mended, "final")[0]["text"]) <= WER_TOLERANCE


async def test_an_engine_elsewhere_is_broken_while_unreachable_and_ready_as_soon_as_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Remote servers: `/health` tells the truth before any session tries them, and the backoff after
    a failed probe (here a minute) does not keep the daemon refusing work once they answer again."""
    monkeypatch.setattr(core, "RESTART_BACKOFF_S", (60.0, 60.0))
    engine = UnreachableEngineDouble()
    async with running_daemon(engine) as daemon, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}/health"
        assert (await health_once(http, url))[0] == 200
        engine.reachable = False
        status, body = await health_once(http, url)
        assert (status, body["status"], body["ready"]) == (503, "broken", False), "no decode needed to know"
        failed = await stream_file(FIXTURES / "weather.wav", ws_url(daemon), fast=True)
        assert {e["code"] for e in of_type(failed, "error")} == {"engine_error"}
        # the probe failed: a minute's backoff has begun
        await health_when(http, url, lambda _: daemon.core.engine_status == "broken")
        engine.reachable = True
        loop = asyncio.get_running_loop()
        back = loop.time()
        status, body = await health_when(http, url, lambda body: body["status"] == "ready")
        waited = loop.time() - back
        mended = await stream_file(FIXTURES / "weather.wav", ws_url(daemon), fast=True)
    assert status == 200 and waited < 30, f"served again {waited:.1f} s after the engine was back, not after 60 s"
    assert of_type(mended, "error") == []


async def test_qwen3_vllm_without_vllm_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--engine qwen3-vllm` on a machine without vLLM said only "No module named 'vllm'"."""
    from satellite_asr.engines.base import EngineError
    from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, wherever the tests run
    with pytest.raises(EngineError) as raised:
        await Qwen3VllmEngine().start()
    assert str(raised.value).startswith(
        "the qwen3-vllm engine needs vLLM, which is not installed: on a machine with an NVIDIA GPU, in the "
        "checkout, .venv/bin/pip install -e '.[vllm]' (README: On a GPU)"
    )
