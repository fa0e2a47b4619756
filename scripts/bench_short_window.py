"""How short may Whisper's short-context window be? Time, words and repetitions per minimum length.

Decodes the `--splits` of the turn set (tests/fixtures/turns) with the real bundled tiny.en the
way the daemon decodes a final, once per `--min-s` (the first of the engine's
`SHORT_CONTEXT_MINIMUMS_S`; the longer ones it retries a repeating decode on stay), the minimums
taking turns on each command so that the load of a shared machine falls on all alike:
complete commands cut 0.1 s after the voice (what a command ended by the short silence has),
paused and hard ones 0.3 s after it.
Reports the word error rate per minimum, the median over commands of its decode time against the
first minimum's, and the decodes that repeated themselves and were redone on a longer window,
also over `--cuts` splits cut every 0.4 s as partials decode them.

    PYTHONPATH=. .venv/bin/python scripts/bench_short_window.py --min-s 8 --min-s 6 --splits dev,fresh [--cuts dev]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import jiwer

import satellite_asr.engines.whisper as whisper
from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.clients.bench import normalise_words
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import StreamOptions
from tests.eval_turns import MANIFEST, TURNS, utterance_start

OPTIONS = StreamOptions(language="en", context="", names=())
AFTER_VOICE_S = {"complete": 0.1, "paused": 0.3, "hard": 0.3}
CUT_STEP_S = 0.4


def command_audio(name: str) -> Audio:
    entry = MANIFEST[name]
    audio = read_wav(TURNS / name).to_16k_mono()
    stop = entry["voice_end_s"] + AFTER_VOICE_S[entry["category"]]
    return audio[utterance_start(name) : int(stop * SAMPLE_RATE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-s", type=float, action="append", required=True, help="a minimum window (repeatable)")
    parser.add_argument("--splits", required=True, help="comma-separated splits whose commands are decoded")
    parser.add_argument("--cuts", default="", help="comma-separated splits also decoded cut every 0.4 s")
    args = parser.parse_args()
    engine = whisper.WhisperEngine()
    asyncio.run(engine.start())
    redecodes: list[str] = []

    def count_longer_window(reason: str) -> None:
        if reason in (whisper.REDECODE_LONGER_WINDOW, whisper.REDECODE_FULL_WINDOW):
            redecodes.append(reason)

    engine.report_redecodes(count_longer_window)
    retries = whisper.SHORT_CONTEXT_MINIMUMS_S[1:]

    def decode(audio: Audio, minimum: float, *, final: bool) -> tuple[str, float, int]:
        """The text, the time it took, and 1 if it was redone on a longer window (else 0)."""
        # the engine reads the minimums at each decode
        whisper.SHORT_CONTEXT_MINIMUMS_S = (minimum, *(retry for retry in retries if retry > minimum))
        before, start = len(redecodes), time.perf_counter()
        text = engine._decode(audio, OPTIONS, final).text
        return text, time.perf_counter() - start, int(len(redecodes) > before)

    minimums = args.min_s
    words: dict[tuple[float, str], tuple[list[str], list[str]]] = {}
    seconds: dict[float, list[float]] = {m: [] for m in minimums}
    repeated = dict.fromkeys(minimums, 0)
    chosen = [n for n, e in MANIFEST.items() if e["split"] in args.splits.split(",")]
    for index, name in enumerate(chosen):
        audio, category = command_audio(name), MANIFEST[name]["category"]
        for minimum in minimums[index % len(minimums) :] + minimums[: index % len(minimums)]:
            text, took, redone = decode(audio, minimum, final=True)
            refs, hyps = words.setdefault((minimum, category), ([], []))
            refs.append(normalise_words(MANIFEST[name]["text"]))
            hyps.append(normalise_words(text) or "-")
            seconds[minimum].append(took)
            repeated[minimum] += redone
    cut_repeats, cuts = dict.fromkeys(minimums, 0), 0
    for name in (n for n, e in MANIFEST.items() if e["split"] in args.cuts.split(",")):
        audio = read_wav(TURNS / name).to_16k_mono()
        for end in range(int(2 * CUT_STEP_S * SAMPLE_RATE), audio.size, int(CUT_STEP_S * SAMPLE_RATE)):
            cuts += 1
            for minimum in minimums:
                cut_repeats[minimum] += decode(audio[:end], minimum, final=False)[2]
    first = seconds[minimums[0]]
    for minimum in minimums:
        wer = ", ".join(
            f"{category} {jiwer.wer(*words[(minimum, category)]) * 100:.1f}%"
            for category in ("complete", "paused", "hard")
            if (minimum, category) in words
        )
        ratio = statistics.median(mine / base for mine, base in zip(seconds[minimum], first, strict=True))
        print(
            f"min {minimum:g} s: WER {wer}; decode {statistics.median(seconds[minimum]) * 1000:.0f} ms median, "
            f"{ratio:.2f}x min {minimums[0]:g} s; redone on a longer window: {repeated[minimum]} of "
            f"{len(first)} commands, {cut_repeats[minimum]} of {cuts} cuts"
        )


if __name__ == "__main__":
    main()
