"""What Home Assistant's own auto gain and noise suppression would do to our recognition and endpointing.

Home Assistant (2026.11) runs speex, through pyspeex-noise, on a pipeline's audio in 10 ms chunks
when the pipeline's `AudioSettings` ask for it (assist_pipeline/audio_enhancer.py,
`MicroVadSpeexEnhancer`: `AudioProcessor(auto_gain_dbfs * 300, noise_suppression_level * -15)`).
Whether our Wyoming info should say it prefers that (`prefers_auto_gain_enabled`,
`prefers_noise_reduction_enabled`) depends on whether it helps: this passes the complete commands
of the turn set's `--splits` (tests/fixtures/turns) through that processing at Home Assistant's
settings, as they were made, with pink noise added at 10 and 5 dB SNR, and 25 dB quieter, and for
each reports the word error rate of the bundled tiny.en's final, and where Silero hears the
command's speech end (the last window at or over the threshold) compared with where the voice
really stops: median offset, how many files end two windows (64 ms) or more from where the same
file unprocessed ends (speex's output lags its input by one 10 ms chunk, which can move it by one
window), and how many have Silero hear speech after the command (noise taken for speech,
which holds an utterance open). The final is decoded as the daemon decodes one that waited the long
silence: from the utterance's start to that speech end plus `long_wait_pad_samples`.

pyspeex-noise is Home Assistant's dependency, not ours: install its pin somewhere apart, e.g.
    .venv/bin/python -m pip install --target /tmp/speex pyspeex-noise==1.0.2
    PYTHONPATH=.:/tmp/speex .venv/bin/python scripts/bench_audio_processing.py --splits dev,heldout
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import zlib
from dataclasses import dataclass

import jiwer
import numpy as np

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.clients.bench import normalise_words
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import load_settings
from satellite_asr.engines.base import StreamOptions
from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.vad.endpointer import WINDOW, EndpointerConfig
from satellite_asr.vad.silero import SileroVad
from tests.eval_turns import MANIFEST, TURNS, utterance_start

try:
    from pyspeex_noise import AudioProcessor
except ImportError as missing:
    raise SystemExit(f"needs pyspeex-noise (Home Assistant's pin, 1.0.2): see {__file__}'s docstring") from missing

OPTIONS = StreamOptions(language="en", context="", names=())
CHUNK = SAMPLE_RATE // 100
"""Home Assistant's enhancer takes 10 ms chunks."""
AFTER_VOICE_S = 0.3
"""Speech heard later than this after the voice stops is noise, not the command's tail."""
PROCESSING = {
    "none": (0, 0),
    "auto gain 31 dBFS": (31, 0),
    "noise suppression 2": (0, 2),
    "both (31 dBFS, 2)": (31, 2),
    "both, max (31 dBFS, 4)": (31, 4),
}
"""Home Assistant's `auto_gain_dbfs` (0-31) and `noise_suppression_level` (0-4); 31 and 2 are what
ESPHome's voice firmwares first shipped with (esphome/firmware pull request 51)."""
CONDITIONS = {"as made": (0.0, None), "pink noise, 10 dB SNR": (0.0, 10.0), "pink noise, 5 dB SNR": (0.0, 5.0)}
CONDITIONS["25 dB quieter"] = (-25.0, None)
"""The audio before processing: a gain in dB on the files as made (which have a little white, pink or
brown noise in them), and pink noise added at an SNR (None: none added). The quieter one is a far
or quiet microphone that nothing turned up: what auto gain is for."""


def pink_noise(samples: int, seed: int) -> np.ndarray:
    """Unit-RMS 1/f noise (white noise shaped in the frequency domain), the same for the same seed."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(samples))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    noise = np.fft.irfft(spectrum, samples)
    return noise / np.sqrt(np.mean(noise**2))


def as_heard(name: str, audio: np.ndarray, gain_db: float, snr_db: float | None) -> np.ndarray:
    audio = (audio * 10 ** (gain_db / 20)).astype(np.float32)
    if snr_db is None:
        return audio
    entry = MANIFEST[name]
    voice = audio[int(entry["voice_start_s"] * SAMPLE_RATE) : int(entry["voice_end_s"] * SAMPLE_RATE)]
    level = np.sqrt(np.mean(voice**2)) / 10 ** (snr_db / 20)
    noisy = audio + level * pink_noise(audio.size, zlib.crc32(name.encode()))
    return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def home_assistant_processing(audio: np.ndarray, auto_gain_dbfs: int, noise_suppression_level: int) -> np.ndarray:
    """The audio as Home Assistant's enhancer hands it on: one speex processor for the whole stream."""
    if auto_gain_dbfs == 0 and noise_suppression_level == 0:
        return audio
    processor = AudioProcessor(auto_gain_dbfs * 300, noise_suppression_level * -15)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % CHUNK, dtype="<i2")])
    out = b"".join(processor.Process10ms(pcm[i : i + CHUNK].tobytes()).audio for i in range(0, pcm.size, CHUNK))
    return (np.frombuffer(out, dtype="<i2")[: audio.size] / 32768.0).astype(np.float32)


@dataclass
class Heard:
    reference: str
    text: str
    speech_end: int | None
    """The sample where the last speech window before `AFTER_VOICE_S` past the voice ends; None: none heard."""
    voice_end: int
    noise_after: bool
    """Silero heard speech later than `AFTER_VOICE_S` after the voice stopped."""


async def hear(
    engine: WhisperEngine, vad: SileroVad, name: str, audio: np.ndarray, threshold: float, pad: int
) -> Heard:
    entry = MANIFEST[name]
    probabilities = await vad.open_stream().process(audio)
    limit = (entry["voice_end_s"] + AFTER_VOICE_S) * SAMPLE_RATE
    ends = [(i + 1) * WINDOW for i, p in enumerate(probabilities) if p >= threshold]
    within = [end for end in ends if end <= limit]
    end = max(within) if within else None
    stop = (end if end is not None else int(limit)) + pad
    text = (await engine.decode(audio[utterance_start(name) : stop], OPTIONS, final=True)).text
    return Heard(
        normalise_words(entry["text"]),
        normalise_words(text) or "-",
        end,
        round(entry["voice_end_s"] * SAMPLE_RATE),
        any(end > limit for end in ends),
    )


async def run(splits: list[str]) -> None:
    settings = load_settings(None, environ={})
    pad = EndpointerConfig.from_settings(settings).long_wait_pad_samples
    engine, vad = WhisperEngine(), SileroVad()
    await engine.start()
    await vad.start()
    names = [n for n, e in MANIFEST.items() if e["split"] in splits and e["category"] == "complete"]
    heard: dict[tuple[str, str], list[Heard]] = {}
    try:
        for name in names:
            clean = read_wav(TURNS / name).to_16k_mono()
            for condition, (gain_db, snr_db) in CONDITIONS.items():
                before = as_heard(name, clean, gain_db, snr_db)
                for label, (gain, suppression) in PROCESSING.items():
                    audio = home_assistant_processing(before, gain, suppression)
                    result = await hear(engine, vad, name, audio, settings.vad_threshold, pad)
                    heard.setdefault((condition, label), []).append(result)
    finally:
        await vad.close()
        await engine.close()
    print(
        f"{len(names)} complete commands of {', '.join(splits)}. speech end: where Silero's last speech window"
        " ends after the voice's real end (median); moved: files whose speech end is 2 windows (64 ms) or more"
        " from the same file's unprocessed one (speex's output lags 10 ms, which alone moves it by 1 at most)"
    )
    for condition in CONDITIONS:
        print(condition)
        unprocessed = heard[(condition, "none")]
        for label in PROCESSING:
            results = heard[(condition, label)]
            wer = jiwer.wer([h.reference for h in results], [h.text for h in results]) * 100
            offsets = [(h.speech_end - h.voice_end) * 1000 / SAMPLE_RATE for h in results if h.speech_end is not None]
            moved = sum(
                h.speech_end is None or u.speech_end is None or abs(h.speech_end - u.speech_end) >= 2 * WINDOW
                for h, u in zip(results, unprocessed, strict=True)
            )
            median = f"{statistics.median(offsets):+.0f} ms" if offsets else "-"
            print(
                f"  {label:24} WER {wer:5.1f}%  speech end {median:>7} (none heard: {len(results) - len(offsets)})"
                f"  moved: {moved:2}  speech after the command: {sum(h.noise_after for h in results):2}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", required=True, help="comma-separated splits whose complete commands are used")
    args = parser.parse_args()
    asyncio.run(run(args.splits.split(",")))


if __name__ == "__main__":
    main()
