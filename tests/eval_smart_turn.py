"""Measure Pipecat's Smart Turn v3.2 beside the turn detector on the same audio at a pause.

Smart Turn (an audio end-of-turn classifier trained on human speech, bundled in the `pipecat-ai`
wheel, a test dependency) scores the audio `tests.eval_turns` decodes: from `PRE_ROLL_S` before
the voice to `--pad` after it stops at the pause (paused and hard files) or at its end (complete
ones); the model sees the last 8 s, zeros before a shorter utterance, as Pipecat feeds it. For each
file it prints the category, the daemon's own decision (`tests.eval_turns.judge`: tiny.en's text,
the voice's heading and the verdict) and Smart Turn's probability of "complete"; then per split
and category how many files Smart Turn calls complete at Pipecat's threshold (0.5) with the
spread of its scores, and what each rule of `RULES` (fixed before any human file was scored)
judges complete.

    PYTHONPATH=. .venv/bin/python -m tests.eval_smart_turn [--split human] [--pad 0.2]
        [--category paused] [--time]

`--time` times Smart Turn and one tiny.en decode on each selected file's audio instead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import onnxruntime as ort
from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.engines.base import StreamOptions
from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.vad.turn import RISEN_SEMITONES, RuleTurnDetector, TurnVerdict
from tests.eval_turns import DEFAULT_PAD_S, MANIFEST, SPLITS, Judged, heard_at_decision, judge

MODEL = resources.files("pipecat.audio.turn.smart_turn.data") / "smart-turn-v3.2-cpu.onnx"
WINDOW = 8 * SAMPLE_RATE
"""The model reads 8 s at 16 kHz: the utterance's last 8 s, zeros before a shorter one."""
THRESHOLD = 0.5
"""Pipecat's own line between incomplete and complete; not tuned here."""
CATEGORIES = ("complete", "paused", "hard")


class SmartTurn:
    """The ONNX model run as Pipecat's `LocalSmartTurnAnalyzerV3` runs it (one thread, its features)."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(MODEL), sess_options=options)

    def probability(self, audio: Audio) -> float:
        """How likely the speaker has finished, by the audio alone."""
        last = audio[-WINDOW:]
        features = compute_whisper_log_mel_features(np.pad(last, (WINDOW - len(last), 0)), do_normalize=True)
        return float(self._session.run(None, {"input_features": features[np.newaxis]})[0].item())


@dataclass(frozen=True)
class Scored:
    judged: Judged
    probability: float

    @property
    def category(self) -> str:
        return str(MANIFEST[self.judged.name]["category"])

    @property
    def split(self) -> str:
        return str(MANIFEST[self.judged.name]["split"])


def _words_pass(s: Scored) -> bool:
    """The word rules (and punctuation) did not find the text incomplete."""
    return s.judged.verdict is not TurnVerdict.INCOMPLETE


def _not_rising(s: Scored) -> bool:
    """The voice was not heading up past the question line (or its pitch was not measured)."""
    return s.judged.pitch is None or s.judged.pitch < RISEN_SEMITONES


def _text_rules_complete(s: Scored) -> bool:
    """The detector without the voice (text, punctuation, confidence) judges it complete."""
    j = s.judged
    return RuleTurnDetector().verdict(j.text, j.language, j.mean_logprob, None) is TurnVerdict.COMPLETE


def _daemon(s: Scored) -> bool:
    return s.judged.verdict is TurnVerdict.COMPLETE


def _smart(s: Scored) -> bool:
    return s.probability >= THRESHOLD


RULES: dict[str, Callable[[Scored], bool]] = {
    "smart turn alone (>= 0.5)": _smart,
    "(a) the daemon's rule": _daemon,
    "(b) (a), or words pass, smart turn, not rising": lambda s: (
        _daemon(s) or (_words_pass(s) and _smart(s) and _not_rising(s))
    ),
    "(b2) (a), or text rules complete, smart turn, not rising": lambda s: (
        _daemon(s) or (_text_rules_complete(s) and _smart(s) and _not_rising(s))
    ),
    "(c) (a) and smart turn (a veto)": lambda s: _daemon(s) and _smart(s),
}
"""What judges a file complete; fixed before any human file was scored. "Words pass": the word
rules did not find the text incomplete; "not rising": heading under `RISEN_SEMITONES` or not
measured; "text rules complete": the detector without the pitch judges it complete."""


def groups(scored: list[Scored]) -> dict[str, list[Scored]]:
    """Each split of the selection, then every espeak-ng split together (all but `human`)."""
    by_split = {split: [s for s in scored if s.split == split] for split in SPLITS}
    by_split = {split: group for split, group in by_split.items() if group}
    synthetic = [s for s in scored if s.split != "human"]
    if len(by_split) > 1 and synthetic:
        by_split["espeak-ng, all"] = synthetic
    return by_split


def report(scored: list[Scored], pad: float) -> list[str]:
    lines = [f"pad {pad:.2f} s, {len(scored)} files; Smart Turn called complete at {THRESHOLD} (min / median / max)"]
    for name, group in groups(scored).items():
        for category in CATEGORIES:
            scores = [s.probability for s in group if s.category == category]
            if scores:
                called = sum(p >= THRESHOLD for p in scores)
                spread = f"{min(scores):.3f} / {statistics.median(scores):.3f} / {max(scores):.3f}"
                lines.append(f"  {name:16} {category:9} {called:3} of {len(scores):3}  {spread}")
    lines.append("judged complete: complete (should be all) / paused, cut (should be 0) / hard, cut")
    for rule, complete in RULES.items():
        lines.append(f"  {rule}")
        for name, group in groups(scored).items():
            cells = []
            for category in CATEGORIES:
                members = [s for s in group if s.category == category]
                cells.append(f"{sum(complete(s) for s in members)}/{len(members)}" if members else "-")
            lines.append(f"    {name:16} " + "  ".join(f"{cell:>8}" for cell in cells))
    return lines


def file_line(s: Scored) -> str:
    j = s.judged
    pitch = "  none" if j.pitch is None else f"{j.pitch:+6.2f}"
    return f"{j.name:26} {s.category:9} {j.verdict.value:10} {pitch} {s.probability:6.3f} {j.text!r}"


async def timings(engine: WhisperEngine, smart_turn: SmartTurn, names: list[str], pad: float) -> str:
    """Median wall time of one Smart Turn call and of one tiny.en decode on the same audio."""
    model, decode = [], []
    for name in names:
        audio = heard_at_decision(name, pad)
        start = time.perf_counter()
        smart_turn.probability(audio)
        model.append(time.perf_counter() - start)
        start = time.perf_counter()
        await engine.open_stream(StreamOptions()).final(audio)
        decode.append(time.perf_counter() - start)
    ratios = [m / d for m, d in zip(model, decode, strict=True)]
    return (
        f"{len(names)} files: Smart Turn median {statistics.median(model) * 1000:.0f} ms "
        f"(min {min(model) * 1000:.0f}, max {max(model) * 1000:.0f}); tiny.en decode median "
        f"{statistics.median(decode) * 1000:.0f} ms; Smart Turn / decode, median of the files' "
        f"ratios {statistics.median(ratios):.2f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pad", type=float, default=DEFAULT_PAD_S, help="seconds kept after the voice stops")
    parser.add_argument("--split", choices=SPLITS, help="only this split (default: all of them)")
    parser.add_argument("--category", choices=CATEGORIES, help="only this category (default: all of them)")
    parser.add_argument("--time", action="store_true", help="time Smart Turn and a tiny.en decode per file instead")
    args = parser.parse_args()
    names = [
        n for n, e in MANIFEST.items() if args.split in (None, e["split"]) and args.category in (None, e["category"])
    ]
    smart_turn = SmartTurn()
    engine = WhisperEngine()
    await engine.start()
    try:
        if args.time:
            print(await timings(engine, smart_turn, names, args.pad))
            return
        judged = await judge(engine, RuleTurnDetector(), names, args.pad)
    finally:
        await engine.close()
    scored = [Scored(j, smart_turn.probability(heard_at_decision(j.name, args.pad))) for j in judged]
    print(f"{'file':26} {'category':9} {'daemon':10} {'pitch':>6} {'smart':>6} text")
    for s in scored:
        print(file_line(s))
    print("\n".join(report(scored, args.pad)))


if __name__ == "__main__":
    asyncio.run(main())
