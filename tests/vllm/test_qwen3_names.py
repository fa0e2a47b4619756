"""The household's names reach Qwen3-ASR's context through the daemon (issue 11, plumbing only).

A real daemon with the qwen3-vllm engine on the tiny checkpoint reads the names from
HomeAssistantDouble; a WebSocket session's final is decoded by vLLM with them in the system turn.
The random weights cannot recognise anything, so the test checks what reached the prompt.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from satellite_asr.audio import Audio
from satellite_asr.biasing.context import biasing_context
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.qwen3_prompt import Generated, Qwen3Decoding
from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine
from satellite_asr.homeassistant.names import HomeNames, rank_names
from satellite_asr.server import Daemon
from tests.helpers import FIXTURES, running_daemon, ws_url
from tests.home_assistant_double import HOME, HomeAssistantDouble, running_home_assistant

pytestmark = pytest.mark.timeout(300)

TOKEN = "qwen3-names-token-5e1a"


class ContextRecordingQwen3Double(Qwen3VllmEngine):
    """The real vLLM engine that records the context of every decode it sends to vLLM."""

    def __init__(self, model: Path) -> None:
        super().__init__(
            str(model),
            dtype="float32",
            max_model_len=2048,
            max_num_seqs=4,
            enforce_eager=True,
            kv_cache_bytes=64 * 2**20,
            decoding=Qwen3Decoding(max_new_tokens=8),
        )
        self.contexts: list[str] = []

    async def continue_decode(
        self, context: str, continuation: str, audio: Audio, *, final: bool, sureness: bool
    ) -> Generated:
        self.contexts.append(context)
        return await super().continue_decode(context, continuation, audio, final=final, sureness=sureness)


@pytest.fixture
async def home_assistant() -> AsyncIterator[HomeAssistantDouble]:
    async with running_home_assistant(TOKEN) as double:
        yield double


async def final_over_websocket(daemon: Daemon, wav: Path, **config: object) -> list[str]:
    audio = read_wav(wav).to_16k_mono()
    async with websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "language": "en", "partials": False, **config}))
        await ws.recv()  # session_created
        await ws.send(audio.astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        return [message["type"] async for raw in ws if (message := json.loads(raw))["type"] == "final"]


async def test_the_homes_names_reach_qwen3s_context(tiny_qwen3_asr: Path, home_assistant: HomeAssistantDouble) -> None:
    engine = ContextRecordingQwen3Double(tiny_qwen3_asr)
    async with running_daemon(engine, ha_url=home_assistant.url, ha_token=TOKEN) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        finals = await final_over_websocket(daemon, FIXTURES / "names" / "named_24.wav", context="Weather.")
        opted_out = len(engine.contexts)
        finals_off = await final_over_websocket(daemon, FIXTURES / "names" / "named_24.wav", household_names=False)
    home_names = rank_names(HomeNames.from_json(HOME), 1000)
    assert finals == ["final"] and finals_off == ["final"]
    assert engine.info.context_names == 100
    assert engine.contexts[0] == biasing_context(home_names[:100], (), "Weather."), engine.contexts[0][:200]
    assert "Phone battery" not in engine.contexts[0], "not exposed to Assist"
    assert engine.contexts[opted_out:] and set(engine.contexts[opted_out:]) == {""}, "the client opted out"
