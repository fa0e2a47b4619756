"""Measure `add_for_and` (satellite_asr/engines/whisper.py) on tiny.en's finals: "add" heard "and".

Each file is decoded whole, as its final would be (from `PRE_ROLL_S` before the voice to `--pad`
seconds after it): the commands of tests/fixtures/turns whose words begin with "add" (in
`--turn-splits`) and the files of tests/fixtures/add_or_and (in `--splits`: commands that begin
with "add", and follow-ups that really begin with "and", where no "and" may become "Add"). The
first pass is the partial of the same audio: greedy, as a final is by default, and left as
written. Counted: first passes that begin with "and", finals that begin with "add", and finals
whose words are the sentence's.

    PYTHONPATH=. .venv/bin/python -m tests.eval_add_or_and --splits add_heldout,and_heldout \\
        [--turn-splits fresh5,fresh6] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.biasing.correction import WORD
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import StreamOptions
from satellite_asr.engines.whisper import WhisperEngine
from tests.eval_turns import MANIFEST, PRE_ROLL_S, TURNS

ADD_OR_AND = Path(__file__).parent / "fixtures" / "add_or_and"
ADD_OR_AND_MANIFEST: dict[str, dict[str, Any]] = json.loads((ADD_OR_AND / "manifest.json").read_text())


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


async def measure(engine: WhisperEngine, path: Path, entry: dict[str, Any], pad_s: float) -> tuple[str, str]:
    """The first pass and the final of one file."""
    audio = read_wav(path).to_16k_mono()
    start = int(max(0.0, entry["voice_start_s"] - PRE_ROLL_S) * SAMPLE_RATE)
    audio = audio[start : int((entry["voice_end_s"] + pad_s) * SAMPLE_RATE)]
    stream = engine.open_stream(StreamOptions(language="en"))
    return (await stream.partial(audio)).text, (await stream.final(audio)).text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="", help="comma-separated tests/fixtures/add_or_and splits")
    parser.add_argument("--turn-splits", default="", help="comma-separated tests/fixtures/turns splits")
    parser.add_argument("--pad", type=float, default=0.3, help="seconds kept after the voice stops")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every file's texts")
    args = parser.parse_args()
    splits, turn_splits = set(args.splits.split(",")), set(args.turn_splits.split(","))
    files = [(ADD_OR_AND / name, entry) for name, entry in ADD_OR_AND_MANIFEST.items() if entry["split"] in splits]
    files += [
        (TURNS / name, entry)
        for name, entry in MANIFEST.items()
        if entry["split"] in turn_splits and words(entry["text"])[:1] == ["add"]
    ]
    engine = WhisperEngine()
    await engine.start()
    counts: dict[str, Counter[str]] = {}
    try:
        for path, entry in files:
            first, final = await measure(engine, path, entry, args.pad)
            kind = f"begin with {words(entry['text'])[0]!r}"
            tally = counts.setdefault(kind, Counter())
            tally["files"] += 1
            tally["first pass 'and'"] += words(first)[:1] == ["and"]
            tally["final 'add'"] += words(final)[:1] == ["add"]
            tally["final's words right"] += words(final) == words(entry["text"])
            if args.verbose:
                print(f"{path.name:26} {entry['text']!r}\n    first {first!r}\n    final {final!r}", flush=True)
    finally:
        await engine.close()
    for kind, tally in counts.items():
        print(kind, dict(tally))


if __name__ == "__main__":
    asyncio.run(main())
