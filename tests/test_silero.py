"""The shared Silero model: real speech detection, chunking invariance, batching invariance."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np

from satellite_asr.vad.endpointer import WINDOW
from satellite_asr.vad.silero import SileroVad
from tests.helpers import EXPECTED, FIXTURES, fixture_16k, same_words


async def probabilities(vad: SileroVad, audio: np.ndarray, chunk: int) -> list[float]:
    stream = vad.open_stream()
    out: list[float] = []
    for offset in range(0, audio.size, chunk):
        out.extend(await stream.process(audio[offset : offset + chunk]))
    return out


async def test_speech_is_detected_where_it_is() -> None:
    vad = SileroVad()
    await vad.start()
    try:
        audio = fixture_16k("lights_on.wav")  # 0.5 s lead, speech, 1.5 s trailing silence
        probs = np.array(await probabilities(vad, audio, 1600))
    finally:
        await vad.close()
    assert probs.size == audio.size // WINDOW
    lead = probs[: int(0.4 * 16000 / WINDOW)]
    trail = probs[-int(1.2 * 16000 / WINDOW) :]
    assert lead.max() < 0.2 and trail.max() < 0.2
    assert (probs > 0.5).sum() * WINDOW / 16000 > 0.8, "over 0.8 s of the command is speech"


async def test_odd_chunk_sizes_give_the_same_probabilities() -> None:
    vad = SileroVad()
    await vad.start()
    try:
        audio = fixture_16k("weather.wav")
        aligned = await probabilities(vad, audio, WINDOW * 4)
        odd = await probabilities(vad, audio, 777)
    finally:
        await vad.close()
    np.testing.assert_allclose(odd, aligned, atol=1e-5)


async def test_batched_streams_match_streams_run_alone() -> None:
    vad = SileroVad()
    await vad.start()
    try:
        names = ["lights_on.wav", "weather.wav", "timer.wav", "music.wav"]
        audios = [fixture_16k(n) for n in names]
        alone = [await probabilities(vad, a, 1600) for a in audios]
        batches_before = vad.batches
        together = await asyncio.gather(*(probabilities(vad, a, 1600) for a in audios))
        batches_together = vad.batches - batches_before
    finally:
        await vad.close()
    for solo, joint in zip(alone, together, strict=True):
        np.testing.assert_allclose(joint, solo, atol=1e-4)
    windows_total = sum(len(p) for p in together)
    assert batches_together < windows_total * 0.5, "concurrent streams share model calls"


def test_transcribing_does_not_import_torch() -> None:
    """The VAD loads silero-vad's ONNX file; importing the package imports torch (its `__init__`),
    which cost seconds of CPU at start and at exit: on a busy machine the process outlived its
    shutdown by 2-3 s while the interpreter tore torch down. A real transcription, start to end,
    in a process of its own (the test process may have imported torch for other tests)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "satellite_asr", "transcribe", str(FIXTURES / "lights_on.wav")],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert same_words(EXPECTED["lights_on.wav"], [line.split("\t")[3] for line in result.stdout.splitlines()])
    import_log = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in import_log}
    assert "numpy" in imported, "the import log was read"
    assert "torch" not in imported
