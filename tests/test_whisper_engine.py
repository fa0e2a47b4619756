"""The CPU engine on its own: model by path, by name (offline here), short-context decoding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import EngineError, StreamOptions
from satellite_asr.engines.whisper import WhisperEngine, bundled_tiny_en_path, repeats_itself
from tests.helpers import EXPECTED, FIXTURES, word_error_rate

pytestmark = pytest.mark.timeout(120)

SERVE = [sys.executable, "-m", "satellite_asr", "serve", "--host", "127.0.0.1", "--http-port", "0", "--no-zeroconf"]
SERVE += ["--wyoming-uri", "none"]


async def test_model_by_local_path_and_short_context_matches_full_window() -> None:
    short = WhisperEngine(bundled_tiny_en_path())
    full = WhisperEngine(bundled_tiny_en_path(), short_context=False)
    await short.start()
    await full.start()
    try:
        assert short.info.model == bundled_tiny_en_path() and short.info.languages == ["en"]
        for name in ("lights_on.wav", "weather.wav", "timer.wav", "music.wav"):
            audio = read_wav(FIXTURES / name).to_16k_mono()
            fast = await short.open_stream(StreamOptions()).final(audio)
            slow = await full.open_stream(StreamOptions()).final(audio)
            assert word_error_rate(EXPECTED[name][0], fast.text) == 0.0, fast.text
            assert word_error_rate(slow.text, fast.text) == 0.0
            assert fast.language == "en" and fast.tokens > 0
    finally:
        await short.close()
        await full.close()


async def test_final_keeps_the_promised_prefix() -> None:
    engine = WhisperEngine()
    await engine.start()
    try:
        audio = read_wav(FIXTURES / "lights_on.wav").to_16k_mono()
        result = await engine.open_stream(StreamOptions()).final(audio, prefix="turn on the")
    finally:
        await engine.close()
    assert result.text.startswith("turn on the")
    assert word_error_rate(EXPECTED["lights_on.wav"][0], result.text) == 0.0


def test_repetition_detector() -> None:
    assert repeats_itself([1, 2, 3, 4, 9, 1, 2, 3, 4])
    assert not repeats_itself([1, 2, 3, 4, 5, 1, 2, 3, 9])
    assert not repeats_itself([7, 7, 7])


async def test_unknown_model_is_a_clear_error() -> None:
    engine = WhisperEngine("/nonexistent/model-dir")
    with pytest.raises(EngineError, match="cannot load whisper model '/nonexistent/model-dir'"):
        await engine.start()
    await engine.close()


def test_model_by_name_needs_a_download_and_serve_exits_when_it_cannot() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*SERVE, "--model", "small.en"],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert result.returncode == 1
    assert "engine whisper failed to load: cannot load whisper model 'small.en'" in result.stderr
