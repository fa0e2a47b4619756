"""Replay turn-set files through the daemon as a microphone would; list the turn decisions it made.

Each file streams over the WebSocket protocol at real-time pace to an in-process daemon with its
default settings, and the session's debug line for each verdict handed to the endpointer is kept:
where in the audio the pause was, the speculative text and the engine's log-probability per token
for it, where the voice's pitch was heading (`vad.prosody.final_pitch`) and the verdict. A paused
or hard command is judged on its decisions inside its pause (hard ones are reported, not scored),
a complete one on its decision at its end. Unlike `tests.eval_turns`, which decodes the audio cut
at a fixed pad, these are the decisions the running daemon makes, on the audio it had when it made
them. `--line` judges the same decisions
again with another pitch line (the word rules still apply), to see what it would win or cut; the
line for words the engine doubts moves with it (`DOUBTED_FALLEN_SEMITONES` stays as far under), the
line for a question asked rising (`RISEN_SEMITONES`) does not.

    PYTHONPATH=. .venv/bin/python -m tests.replay_turns --split fresh6 [--line -2.0] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from satellite_asr.clients.bench import stream_at_pace
from satellite_asr.clients.wav import read_wav
from satellite_asr.protocols.websocket import PATH
from satellite_asr.server import in_process_daemon
from satellite_asr.vad.turn import FALLEN_SEMITONES, RISEN_SEMITONES, RuleTurnDetector, TurnVerdict
from tests.eval_turns import MANIFEST, SPLITS, TURNS
from tests.helpers import daemon_settings, turn_decisions

DETECTOR = RuleTurnDetector()
PAUSE_GRACE_S = 0.35
"""A decision on audio that ends this long after a pause ends still belongs to it (the pause's
first speculation, with its trailing pad)."""


@dataclass(frozen=True)
class Decision:
    name: str
    at_s: float
    """Where in the file the audio the decision read ends."""
    text: str
    mean_logprob: float | None
    pitch: float | None
    verdict: TurnVerdict

    @property
    def category(self) -> str:
        return str(MANIFEST[self.name]["category"])

    def scored(self) -> bool:
        """Inside a paused or hard command's pause, or at a complete command's end."""
        entry = MANIFEST[self.name]
        if self.category == "complete":
            return self.at_s >= entry["voice_end_s"]
        return entry["pause_start_s"] <= self.at_s <= entry["pause_end_s"] + PAUSE_GRACE_S

    def judged_complete(self, line: float | None = None) -> bool:
        """The daemon's verdict; with a pitch `line`, the verdict had the line been there instead (the
        line for words the engine doubts moves with it)."""
        if line is None or self.pitch is None:
            return self.verdict is TurnVerdict.COMPLETE
        if self.pitch >= RISEN_SEMITONES:  # a question asked rising: its line does not move with the falling one
            return DETECTOR.verdict(self.text, "en", self.mean_logprob, self.pitch) is TurnVerdict.COMPLETE
        shifted = self.pitch - line + FALLEN_SEMITONES  # under `line` exactly when under the detector's own
        return (
            shifted < RISEN_SEMITONES
            and DETECTOR.verdict(self.text, "en", self.mean_logprob, shifted) is TurnVerdict.COMPLETE
        )


@dataclass(frozen=True)
class Replayed:
    name: str
    decisions: list[Decision]
    finals: int


async def replay(names: list[str]) -> list[Replayed]:
    results = []
    async with in_process_daemon(daemon_settings()) as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}{PATH}"
        with turn_decisions() as heard:
            sessions = []
            for name in names:
                _, received = await stream_at_pace(url, read_wav(TURNS / name).to_16k_mono(), 0.0, {}, {})
                session = next(m["session_id"] for _, m in received if m["type"] == "session_created")
                finals = sum(m["type"] == "final" for _, m in received)
                sessions.append((name, session, finals))
    for name, session, finals in sessions:
        decisions = [Decision(name, *line) for line in heard.of_session(session)]
        results.append(Replayed(name, decisions, finals))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, action="append", required=True, help="a split (repeatable)")
    parser.add_argument(
        "--line",
        type=float,
        action="append",
        default=[],
        help="also judge with this pitch line (doubted words: as far under)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every decision")
    args = parser.parse_args()
    names = [n for n, e in MANIFEST.items() if e["split"] in args.split]
    replayed = asyncio.run(replay(names))
    for file in replayed:
        if not any(d.scored() for d in file.decisions):
            print(f"{file.name}: no decision where it is judged ({len(file.decisions)} elsewhere)")
        if args.verbose:
            for d in file.decisions:
                pitch = "-" if d.pitch is None else f"{d.pitch:+.2f}"
                sureness = "-" if d.mean_logprob is None else f"{d.mean_logprob:+.2f}"
                mark = "*" if d.scored() else " "
                print(f"{mark} {d.name:26} {d.at_s:5.2f} s {pitch:>6} {sureness:>6} {d.verdict.value:10} {d.text!r}")
    print(f"{len(names)} files; commands judged complete, by split ({' / '.join(args.split)}):")
    for category in ("complete", "paused", "hard"):
        for line in (None, *args.line):
            counts = []
            for split in args.split:
                mine = [
                    f
                    for f in replayed
                    if MANIFEST[f.name]["split"] == split and MANIFEST[f.name]["category"] == category
                ]
                judged = sum(any(d.scored() and d.judged_complete(line) for d in f.decisions) for f in mine)
                counts.append(f"{judged}/{len(mine)}")
            label = "the daemon" if line is None else f"line {line:+.2f}"
            print(f"  {category:9} {label:12} {' / '.join(counts)}")
    disagree = [d for f in replayed for d in f.decisions if d.judged_complete(FALLEN_SEMITONES) != d.judged_complete()]
    print(f"decisions judged otherwise at the daemon's own line than the daemon did (should be 0): {len(disagree)}")
    split_finals = [f.name for f in replayed if f.finals != 1]
    print(f"files whose command came as other than one final: {len(split_finals)} {split_finals}")


if __name__ == "__main__":
    main()
