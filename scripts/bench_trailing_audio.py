"""Does a command that ends at the short silence lose words for the audio it no longer waits for?

A final ended by a complete verdict is decoded on the audio up to the last speech window plus
what the first speculation had (`EndpointerConfig.trailing_pad_samples`, 96 ms by default); one
that waits the long silence, as every final of `turn_detection: fixed` does, keeps more
(`long_wait_pad_samples`, 256 ms). This decodes the complete commands of the turn set's `--splits`
(tests/fixtures/turns) with the real bundled tiny.en, as the daemon decodes a final, cut both ways
after the last window Silero hears as speech, and reports the word error rate of each cut over all
the commands and split by split: a split of 16 commands moves by a word or two either way, which
is what an end-to-end run of one split compares.

    PYTHONPATH=. .venv/bin/python scripts/bench_trailing_audio.py --splits dev,fresh [--after-ms 64]
"""

from __future__ import annotations

import argparse
import asyncio

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

OPTIONS = StreamOptions(language="en", context="", names=())
SPEECH_AFTER_VOICE_S = 0.3
"""Speech windows later than this after the voice's end are noise, not the command's tail."""


async def last_speech_end(vad: SileroVad, audio: np.ndarray, voice_end_s: float, threshold: float) -> int:
    """The sample where the last window Silero hears as speech ends, as the endpointer counts it."""
    probabilities = await vad.open_stream().process(audio.astype(np.float32))
    limit = (voice_end_s + SPEECH_AFTER_VOICE_S) * SAMPLE_RATE
    ends = [
        (index + 1) * WINDOW
        for index, p in enumerate(probabilities)
        if p >= threshold and (index + 1) * WINDOW <= limit
    ]
    if not ends:
        raise SystemExit(f"Silero hears no speech before {voice_end_s + SPEECH_AFTER_VOICE_S:.2f} s of a command")
    return max(ends)


async def run(splits: list[str], extra_ms: list[int]) -> None:
    settings = load_settings(None, environ={})
    config = EndpointerConfig.from_settings(settings)
    cuts = {"complete verdict": config.trailing_pad_samples, "long wait (fixed)": config.long_wait_pad_samples}
    cuts.update({f"{ms} ms": round(ms * SAMPLE_RATE / 1000) for ms in extra_ms})
    engine, vad = WhisperEngine(), SileroVad()
    await engine.start()
    await vad.start()
    words: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    names = [n for n, e in MANIFEST.items() if e["split"] in splits and e["category"] == "complete"]
    try:
        for name in names:
            entry = MANIFEST[name]
            audio = read_wav(TURNS / name).to_16k_mono()
            end = await last_speech_end(vad, audio, entry["voice_end_s"], settings.vad_threshold)
            for cut, after in cuts.items():
                text = (await engine.decode(audio[utterance_start(name) : end + after], OPTIONS, final=True)).text
                references, heard = words.setdefault((cut, entry["split"]), ([], []))
                references.append(normalise_words(entry["text"]))
                heard.append(normalise_words(text) or "-")
    finally:
        await vad.close()
        await engine.close()
    print(f"{len(names)} complete commands of {len(splits)} splits")
    for cut, after in cuts.items():
        pooled = [w for split in splits for w in zip(*words[(cut, split)], strict=True)]
        wer = jiwer.wer([r for r, _ in pooled], [h for _, h in pooled]) * 100
        per_split = " ".join(f"{split} {jiwer.wer(*words[(cut, split)]) * 100:.1f}" for split in splits)
        print(f"{cut} ({after * 1000 // SAMPLE_RATE} ms after the last speech window): WER {wer:.1f}%  [{per_split}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", required=True, help="comma-separated splits whose complete commands are decoded")
    parser.add_argument("--after-ms", type=int, action="append", default=[], help="another cut to compare (repeatable)")
    args = parser.parse_args()
    asyncio.run(run(args.splits.split(","), args.after_ms))


if __name__ == "__main__":
    main()
