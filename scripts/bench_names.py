"""Household-names benchmark: does biasing with the home's names get them right, at what cost?

Decodes every command of the evaluation set (tests/fixtures/names/, made by make_names.py) with
the real bundled tiny.en, as the daemon decodes a final: without names; with the `--cap` best
ranked names as its prompt (`rank_names` + `biasing_context`; the daemon's default for whisper is
none); as the daemon does with names: that prompt, the engine's second look with the few names
near what it heard (`StreamOptions.names`), then the transcript corrected towards all the home's
names (`NameCorrector`, timed with the decode). The runs take turns on each command.

    PYTHONPATH=. .venv/bin/python scripts/bench_names.py [--half PART] [--cap 0]
    PYTHONPATH=. .venv/bin/python scripts/bench_names.py --faster-whisper   # hotwords vs prompt
    PYTHONPATH=. .venv/bin/python scripts/bench_names.py --half all --ceiling  # an oracle choosing the prompt
    PYTHONPATH=. .venv/bin/python scripts/bench_names.py --half heldout4 --home-names 100  # the issue's home size
    PYTHONPATH=. .venv/bin/python scripts/bench_names.py --half piper_heldout38 piper_heldout39 --home-names 100
    PYTHONPATH=. .venv/bin/python scripts/bench_names.py --half all --home-names 100 --names-only  # every part, pooled
    PYTHONPATH=. .venv/bin/python scripts/bench_names.py --half all --home-names 100 --model base  # another model

PART is one of the parts of commands.json, in its order (today dev, the default, then heldout and
heldout2 to heldout39, then piper_heldout34 to piper_heldout39, the same commands in Piper's neural
voice; a part make_names.py adds is a choice without an edit here), several of them, or all (every
part of both voices; before the Piper parts were added on 2026-12-04, the espeak-ng parts alone).

Reports names right (a name counts when its letters appear in the transcript, ignoring case,
spaces and punctuation), WER of the name-free commands, how many commands came out with one of the
home's names that they did not say (a wrong name, or a name where none was said), and the median
over commands of the ratio of decode times with / without names (what one command waits), with the
ratio of their totals (what the machine spends: a second look makes a few commands much slower).
Tune on `dev` only; the held-out parts are for reporting.

`--home-names N` gives the engine a home of about N names instead of all of `home.json`: every
floor, area and entity the part names, every one no part names (the ordinary "Kitchen lights"),
then other parts' in the file's order up to N (more than N when those two already are); issue 11
sets its targets for a home of about 100. With several parts (or all), each part is decoded with its
own such home, and the counts and times are pooled over the parts (names right also printed part by
part).

`--names-only` runs the daemon's way alone, in half the time: names right, WER and names not said,
without the time ratio (what changes to the correction are chosen by, on the parts already seen).

`--ceiling` also decodes each named command with its own name, and nothing else, as the prompt,
then corrects it as the daemon does: the prompt an oracle that knows the name would choose.
Counting a name right when either that text or the daemon's has it shows what choosing the name
could add to the daemon's way (one oracle's reach, not a bound on every method). A second oracle
also knows which text to keep: the name counts when any of beam search's `NBEST` best texts under
that prompt (the first short window, as `verified` decodes), once corrected, has it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import ctranslate2
import jiwer
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from satellite_asr.audio import Audio
from satellite_asr.biasing.context import biasing_context
from satellite_asr.biasing.correction import NameCorrector, Replacement, apply
from satellite_asr.clients.bench import normalise_words
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import StreamOptions
from satellite_asr.engines.whisper import (
    REDECODE_SECOND_LOOK,
    WhisperEngine,
    short_windows,
)
from satellite_asr.homeassistant.names import HomeNames, rank_names

NAMES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "names"

Decode = Callable[[Audio, str], Awaitable[str]]
NBEST = 5
"""Beam width and texts kept by `--ceiling`'s second oracle."""


def letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def name_heard(name: str, transcript: str) -> bool:
    return letters(name) in letters(transcript)


def names_not_said(names: Sequence[str], said: str, transcript: str) -> list[str]:
    """The home's names (of five letters or more: "Den" is in "garden") that `transcript` holds and
    the command, `said`, does not: a name written where none was said, or the wrong one."""
    long_enough = [name for name in names if len(letters(name)) >= 5]
    return [name for name in long_enough if name_heard(name, transcript) and not name_heard(name, said)]


async def evaluate(
    runs: dict[str, tuple[Decode, str]], commands: dict[str, dict[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    """Per run: names right, the name-free commands' words and what was heard (for their WER),
    commands given a name not said (`names_not_said`), decode seconds per file.

    The runs take turns on each file (the order rotating from file to file), so that the load of a
    shared machine falls on all of them alike.
    """
    results: dict[str, dict[str, Any]] = {
        label: {"right": 0, "named": 0, "refs": [], "hyps": [], "seconds": {}, "misses": [], "texts": {}, "wrong": []}
        for label in runs
    }
    labels = list(runs)
    for index, (file, command) in enumerate(commands.items()):
        audio = read_wav(NAMES / file).to_16k_mono()
        for label in labels[index % len(labels) :] + labels[: index % len(labels)]:
            decode, context = runs[label]
            result = results[label]
            start = time.perf_counter()
            text = await decode(audio, context)
            result["seconds"][file] = time.perf_counter() - start
            result["texts"][file] = text
            if wrong := names_not_said(names, command["text"], text):
                result["wrong"].append(f"{command['text']!r} -> {text!r} ({', '.join(wrong)})")
            if command["name"]:
                result["named"] += 1
                if name_heard(command["name"], text):
                    result["right"] += 1
                else:
                    result["misses"].append(f"{command['name']!r} -> {text!r}")
            else:
                result["refs"].append(normalise_words(command["text"]))
                result["hyps"].append(normalise_words(text) or "-")
    return results


def report(label: str, result: dict[str, Any]) -> None:
    print(
        f"  {label:<14} names {result['right']}/{result['named']}"
        f" ({100 * result['right'] / max(1, result['named']):.0f}%)   name-free WER {result['wer']:.1f}%"
        f"   a name not said in {len(result['wrong'])} commands"
    )


def parts(commands: dict[str, dict[str, Any]]) -> list[str]:
    """The parts of the evaluation set, in the order commands.json first names them."""
    return list(dict.fromkeys(command["half"] for command in commands.values()))


async def main() -> None:
    every_command = json.loads((NAMES / "commands.json").read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--half", nargs="+", choices=[*parts(every_command), "all"], default=["dev"], help="one part, several, or all"
    )
    parser.add_argument("--cap", type=int, default=0, help="names in the prompt (the daemon gives whisper none)")
    parser.add_argument("--faster-whisper", action="store_true", help="faster-whisper's own hotwords vs prompt")
    parser.add_argument("--misses", action="store_true", help="print the names that came out wrong")
    parser.add_argument(
        "--model",
        default="",
        help="a Whisper model other than the bundled tiny.en: a CTranslate2 folder, or a name faster-whisper downloads",
    )
    parser.add_argument(
        "--home-names", type=int, metavar="N", help="a home of about N names that holds the part's (each part its own)"
    )
    parser.add_argument(
        "--names-only",
        action="store_true",
        help="only the daemon's way, no run without names to compare with (names and WER, not the time ratio)",
    )
    parser.add_argument(
        "--ceiling", action="store_true", help="also decode each named command with only its own name as the prompt"
    )
    parser.add_argument(
        "--no-second-look",
        action="store_true",
        help="the engine does not decode again with the names it nearly heard (nor, without the names, say how sure"
        " it was of its tokens: the correction then judges the text alone)",
    )
    parser.add_argument(
        "--threshold", type=float, default=NameCorrector(()).threshold, help="the session's correction's threshold"
    )
    parser.add_argument(
        "--verify",
        type=float,
        metavar="NATS",
        help="experiment, not in the daemon: keep a correction only if Whisper finds the transcript with it"
        " at most NATS less likely (log-probability) than without, given the audio",
    )
    args = parser.parse_args()

    if args.ceiling and args.faster_whisper:
        parser.error("--ceiling measures the daemon's way of decoding, not faster-whisper's own")
    if args.names_only and (args.faster_whisper or args.cap):
        parser.error("--names-only runs the daemon's way alone, without the runs --faster-whisper or --cap compare")
    if "all" in args.half and len(args.half) > 1:
        parser.error("--half all is every part: name no other with it")
    chosen = parts(every_command) if args.half == ["all"] else list(dict.fromkeys(args.half))
    home_json = json.loads((NAMES / "home.json").read_text())
    engine = WhisperEngine(args.model)
    redecodes: list[str] = []
    engine.report_redecodes(redecodes.append)
    await engine.start()
    results: dict[str, dict[str, Any]] = {}
    commands: dict[str, dict[str, Any]] = {}
    ceiling = [0, 0, 0, 0, 0]
    try:
        for part in chosen:
            # with --home-names each part has its own home, which holds that part's names
            home = HomeNames.from_json(
                part_home(home_json, every_command, part, args.home_names) if args.home_names is not None else home_json
            )
            names = rank_names(home, args.cap)
            context = biasing_context(names)
            every_name = tuple(rank_names(home, sys.maxsize))
            corrector = NameCorrector(every_name, threshold=args.threshold)
            mine = {file: command for file, command in every_command.items() if command["half"] == part}
            print(f"{part}: {len(mine)} commands, {len(names)} names in the prompt, {len(every_name)} in the home")
            runs = daemon_runs(engine, corrector, every_name, context, args)
            part_results = await evaluate(runs, mine, every_name)
            if args.ceiling:
                counts = await report_ceiling(engine, corrector, mine, part_results["names"]["texts"])
                ceiling = [total + count for total, count in zip(ceiling, counts, strict=True)]
            if len(chosen) > 1:
                for label, result in part_results.items():
                    print(f"  {label:<14} names {result['right']}/{result['named']}")
            merge(results, part_results)
            commands |= mine
    finally:
        await engine.close()
    if len(chosen) > 1:
        print(f"all {len(chosen)} parts:")
    if args.ceiling:
        alone, corrected, either, any_best, named = ceiling
        print(
            f"  ceiling: its own name as the prompt {alone}/{named}, corrected {corrected}/{named};"
            f" that or the daemon's text {either}/{named} ({100 * either / max(1, named):.0f}%);"
            f" any of its {NBEST} best, corrected, {any_best}/{named} ({100 * any_best / max(1, named):.0f}%)"
        )
    baseline = results[next(iter(results))]["seconds"]
    for label, result in results.items():
        result["wer"] = 100 * float(jiwer.wer(result["refs"], result["hyps"])) if result["refs"] else 0.0
        report(label, result)
        for group, files in (
            ()
            if len(results) == 1
            else (
                ("all", list(baseline)),
                ("named", [file for file in baseline if commands[file]["name"]]),
                ("name-free", [file for file in baseline if not commands[file]["name"]]),
            )
        ):
            ratios = [result["seconds"][file] / baseline[file] for file in files]
            milliseconds = 1000 * statistics.median(result["seconds"][file] for file in files)
            total = sum(result["seconds"][file] for file in files) / sum(baseline[file] for file in files)
            print(
                f"  {'':<14} decode time vs first row, {group} commands: median ratio"
                f" {statistics.median(ratios):.2f}x, total {total:.2f}x, median {milliseconds:.0f} ms"
            )
        if args.misses:
            for miss in result["misses"]:
                print(f"      missed {miss}")
            for wrong in result["wrong"]:
                print(f"      a name not said: {wrong}")
    print(f"  second looks: {redecodes.count(REDECODE_SECOND_LOOK)} of {len(commands)} finals")


def daemon_runs(
    engine: WhisperEngine, corrector: NameCorrector, every_name: tuple[str, ...], context: str, args: argparse.Namespace
) -> dict[str, tuple[Decode, str]]:
    """The runs to compare, by label: faster-whisper's own ways (`--faster-whisper`), or a final
    without names, with the names in the prompt (`--cap`) and the daemon's way; `--names-only`, the
    daemon's way alone."""
    if args.faster_whisper:
        return faster_whisper_runs(engine, context)

    async def final(audio: Audio, text: str) -> str:
        return (await engine.open_stream(StreamOptions(language="en", context=text)).final(audio)).text

    async def daemon(audio: Audio, text: str) -> str:
        names = () if args.no_second_look else every_name
        stream = engine.open_stream(StreamOptions(language="en", context=text, names=names))
        result = await stream.final(audio)
        if args.verify is None:
            return corrector.correct(result.text, result.token_spans, result.nearly_written)
        replacements = corrector.replacements(result.text, result.token_spans, result.nearly_written)
        return await asyncio.to_thread(verified, engine, audio, result.text, replacements, args.verify)

    runs: dict[str, tuple[Decode, str]] = {} if args.names_only else {"no names": (final, "")}
    if args.cap:
        runs["prompt only"] = (final, context)
    runs["names"] = (daemon, context)
    return runs


def merge(results: dict[str, dict[str, Any]], part: dict[str, dict[str, Any]]) -> None:
    """Adds one part's results (`evaluate`) to those of the parts before it, run by run."""
    for label, result in part.items():
        total = results.setdefault(label, {key: type(value)() for key, value in result.items()})
        for key, value in result.items():
            if isinstance(value, dict):
                total[key] |= value
            else:
                total[key] += value


def part_home(home: dict[str, Any], commands: dict[str, dict[str, Any]], part: str, size: int) -> dict[str, Any]:
    """`home` cut to about `size` names: the part's floors, areas and entities, every one whose own
    name no part says (without an alias another part says: "Kitchen speaker" without "Fizzgig"),
    then other parts' whole, in order, until the names (as the daemon ranks them) reach `size`."""
    spoken = {c["name"].casefold() for c in commands.values() if c["name"]}
    own = {c["name"].casefold() for c in commands.values() if c["name"] and c["half"] == part}
    cut: dict[str, list[dict[str, Any]]] = {group: [] for group in home}
    others = []
    for group, items in home.items():
        for item in items:
            said = {n.casefold() for n in [item["name"], *item.get("aliases", ())]} & spoken
            if said <= own:
                cut[group].append(item)
                continue
            others.append((group, item))
            if item["name"].casefold() not in spoken and not said & own:
                aliases = [alias for alias in item.get("aliases", ()) if alias.casefold() not in spoken]
                cut[group].append({**item, "aliases": aliases})
    for group, item in others:
        if len(rank_names(HomeNames.from_json(cut), sys.maxsize)) >= size:
            break
        cut[group] = [kept for kept in cut[group] if kept["name"] != item["name"]] + [item]
    return cut


async def report_ceiling(
    engine: WhisperEngine, corrector: NameCorrector, commands: dict[str, dict[str, Any]], daemon: dict[str, str]
) -> tuple[int, int, int, int, int]:
    """Names right with each command's own name as the whole prompt, then corrected; with the
    better of that and the daemon's text; in any of that prompt's `NBEST` best texts, corrected; and
    the named commands: what an oracle choosing names for the prompt (and then the text) could reach."""
    alone = corrected = either = any_best = named = 0
    for file, command in commands.items():
        name = command["name"]
        if not name:
            continue
        audio = read_wav(NAMES / file).to_16k_mono()
        text = (await engine.open_stream(StreamOptions(language="en", context=name)).final(audio)).text
        named += 1
        alone += name_heard(name, text)
        heard = name_heard(name, corrector.correct(text))  # a stream without names: no token spans
        corrected += heard
        either += heard or name_heard(name, daemon[file])
        best = await asyncio.to_thread(n_best, engine, audio, name)
        any_best += any(name_heard(name, corrector.correct(text)) for text in best)
    return alone, corrected, either, any_best, named


def first_window_encoded(
    engine: WhisperEngine, audio: Audio
) -> tuple[WhisperModel, Tokenizer, np.ndarray, ctranslate2.StorageView]:
    """The library's model and English tokenizer, and `audio` in the first short window the daemon
    decodes it in: its features and what Whisper's encoder makes of them."""
    model = engine._model  # the library under the engine, measured directly
    assert model is not None
    tokenizer = engine._tokenizer("en")
    window = short_windows(audio.size)[0]
    features = model.feature_extractor(audio, padding=window - audio.size)
    encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
    return model, tokenizer, features, encoded


def n_best(engine: WhisperEngine, audio: Audio, context: str) -> list[str]:
    """The `NBEST` best texts of a beam search as wide, after `context`, on the first short window."""
    model, tokenizer, _, encoded = first_window_encoded(engine, audio)
    prompt = model.get_prompt(tokenizer, tokenizer.encode(" " + context), without_timestamps=True)
    result = model.model.generate(
        encoded, [prompt], beam_size=NBEST, num_hypotheses=NBEST, max_length=len(prompt) + 128, suppress_blank=True
    )
    return [tokenizer.decode([t for t in tokens if t < tokenizer.eot]) for tokens in result[0].sequences_ids]


def verified(engine: WhisperEngine, audio: Audio, heard: str, replacements: list[Replacement], nats: float) -> str:
    """`heard` with the replacements Whisper does not find much less likely given the audio, each
    scored on its own: the log-probability of the text's tokens, teacher-forced (CTranslate2 `align`)."""
    if not replacements:
        return heard
    model, tokenizer, features, encoded = first_window_encoded(engine, audio)
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
    texts = [heard, *(apply(heard, [replacement]) for replacement in replacements)]
    tokens = [[*tokenizer.encode(" " + text.strip()), tokenizer.eot] for text in texts]
    scores = [
        sum(
            math.log(max(p, 1e-12))
            for p in model.model.align(encoded, prompt, [ids], features.shape[-1])[0].text_token_probs
        )
        for ids in tokens
    ]
    kept = [r for r, score in zip(replacements, scores[1:], strict=True) if score >= scores[0] - nats]
    return apply(heard, kept)


def faster_whisper_runs(engine: WhisperEngine, context: str) -> dict[str, tuple[Decode, str]]:
    """faster-whisper's `transcribe` (30 s window) with the names as hotwords or as prompt.

    Not both: faster-whisper puts both after the same start-of-previous token, and a 100-name list
    twice does not fit Whisper's 448 positions (CTranslate2 refuses the decode).
    """
    model = engine._model  # the library under the engine, measured directly
    assert model is not None

    def way(option: str) -> Decode:
        async def decode(audio: Audio, text: str) -> str:
            kwargs: dict[str, Any] = {"language": "en", "beam_size": 1, "without_timestamps": True}
            if text:
                kwargs[option] = text

            def run() -> str:
                segments, _ = model.transcribe(audio, **kwargs)
                return "".join(segment.text for segment in segments)

            return await asyncio.to_thread(run)

        return decode

    return {
        "no names": (way("none"), ""),
        "hotwords": (way("hotwords"), context),
        "prompt": (way("initial_prompt"), context),
    }


if __name__ == "__main__":
    asyncio.run(main())
