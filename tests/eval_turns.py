"""Measure the turn detector on the engine's real text at a pause (tests/fixtures/turns).

For each file, Whisper decodes what the daemon would have at the moment it decides: the utterance
from `PRE_ROLL_S` before the voice to `--pad` seconds after the voice stops at the pause (paused and
hard commands) or at its end (complete commands). A paused command must not be judged complete; a
complete one should be. Hard commands (a valid first half) are reported, not scored.

    PYTHONPATH=. .venv/bin/python -m tests.eval_turns [--pad 0.2] [--split dev] [-v]

Where the daemon decodes today: Silero with the default endpointing cuts 0.2-0.4 s (median 0.32 s)
after the voice stops at `silence_ms` 800, 0.08-0.28 s (median 0.2 s) at 450; `--pad` 0.1-0.3
covers a short-silence endpointer deciding earlier.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import Engine, StreamOptions
from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.vad.prosody import final_pitch
from satellite_asr.vad.turn import RuleTurnDetector, TurnDetector, TurnVerdict

TURNS = Path(__file__).parent / "fixtures" / "turns"
MANIFEST: dict[str, dict[str, Any]] = json.loads((TURNS / "manifest.json").read_text())
"""File name -> text, category (paused / complete / hard), split (one of `SPLITS`), voice, speed,
voice_start_s, voice_end_s, and for paused and hard files pause_start_s / pause_end_s."""
SPLITS = tuple(dict.fromkeys(entry["split"] for entry in MANIFEST.values()))
"""The manifest's splits, in its order (make_turns.py says what each is for)."""
PRE_ROLL_S = 0.3
"""Audio before the voice an utterance starts with (the endpointer's default `speech_pad_ms`)."""
DEFAULT_PAD_S = 0.2
"""Audio after the voice stops that the decode gets (the endpointer keeps a trailing pad)."""


def utterance_start(name: str) -> int:
    """The sample the utterance of a file starts at: `PRE_ROLL_S` before its voice (or the file's start)."""
    return int(max(0.0, MANIFEST[name]["voice_start_s"] - PRE_ROLL_S) * SAMPLE_RATE)


def heard_at_decision(name: str, pad_s: float = DEFAULT_PAD_S) -> Audio:
    """The audio the engine decodes when the turn is decided: up to the pause, or to the end."""
    entry = MANIFEST[name]
    audio = read_wav(TURNS / name).to_16k_mono()
    stop = entry["voice_end_s"] if entry["category"] == "complete" else entry["pause_start_s"]
    return audio[utterance_start(name) : int((stop + pad_s) * SAMPLE_RATE)]


@dataclass(frozen=True)
class Judged:
    """A file's decision and what it was made on (the engine's text, language and confidence, and
    the voice's heading; each None when withheld or unknown), so other measures can judge it again."""

    name: str
    text: str
    verdict: TurnVerdict
    language: str | None
    mean_logprob: float | None
    pitch: float | None

    @property
    def correct(self) -> bool | None:
        """Paused: anything but complete; complete: complete; hard: not scored (None)."""
        category = MANIFEST[self.name]["category"]
        if category == "paused":
            return self.verdict is not TurnVerdict.COMPLETE
        if category == "complete":
            return self.verdict is TurnVerdict.COMPLETE
        return None


async def judge(
    engine: Engine,
    detector: TurnDetector,
    names: list[str],
    pad_s: float,
    *,
    word_rules: bool = True,
    confidence: bool = True,
    pitch: bool = True,
) -> list[Judged]:
    """Decode each file as heard at the decision; `word_rules` False withholds the language, which
    leaves the rules to punctuation only, `confidence` False how sure the engine was and `pitch`
    False where the voice's pitch was heading (the baselines the rules are measured against)."""
    results = []
    for name in names:
        audio = heard_at_decision(name, pad_s)
        transcript = await engine.open_stream(StreamOptions()).final(audio)
        language = transcript.language if word_rules else None
        mean_logprob = transcript.mean_logprob if confidence else None
        ending = final_pitch(audio) if pitch else None
        verdict = detector.verdict(transcript.text, language, mean_logprob, ending)
        results.append(Judged(name, transcript.text, verdict, language, mean_logprob, ending))
    return results


def summary(results: list[Judged], split: str) -> list[str]:
    lines = []
    for category, goal in (("paused", "not complete"), ("complete", "complete"), ("hard", "")):
        group = [r for r in results if MANIFEST[r.name]["split"] == split and MANIFEST[r.name]["category"] == category]
        if not group:
            continue
        counts = Counter(r.verdict.value for r in group)
        spread = ", ".join(f"{v.value} {counts[v.value]}" for v in TurnVerdict)
        if goal:
            right = sum(bool(r.correct) for r in group)
            lines.append(
                f"{split:8} {category:9} {goal:13} {right}/{len(group)} ({right / len(group):.0%})  [{spread}]"
            )
        else:
            lines.append(f"{split:8} {category:9} {'(reported)':13} [{spread}]")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pad", type=float, default=DEFAULT_PAD_S, help="seconds kept after the voice stops")
    parser.add_argument("--split", choices=SPLITS, help="only this split (default: all of them)")
    parser.add_argument("--punctuation-only", action="store_true", help="baseline: no English word rules")
    parser.add_argument("--text-only", action="store_true", help="baseline: no confidence, no pitch")
    parser.add_argument("--no-pitch", action="store_true", help="baseline: without where the voice's pitch was heading")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every file's text and verdict")
    args = parser.parse_args()
    names = [n for n, e in MANIFEST.items() if args.split in (None, e["split"])]
    engine = WhisperEngine()
    await engine.start()
    try:
        results = await judge(
            engine,
            RuleTurnDetector(),
            names,
            args.pad,
            word_rules=not args.punctuation_only,
            confidence=not args.text_only,
            pitch=not (args.no_pitch or args.text_only or args.punctuation_only),
        )
    finally:
        await engine.close()
    for r in results:
        if args.verbose or r.correct is False:
            mark = {True: "ok", False: "WRONG", None: "hard"}[r.correct]
            print(f"{mark:5} {r.name:24} {r.verdict.value:10} {r.text!r}")
    if args.punctuation_only:
        rules = "punctuation only"
    elif args.text_only:
        rules = "text rules only"
    elif args.no_pitch:
        rules = "without the pitch"
    else:
        rules = "all rules"
    print(f"pad {args.pad:.2f} s, bundled tiny.en, {len(results)} files, {rules}")
    for split in SPLITS:
        if lines := summary(results, split):
            print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
