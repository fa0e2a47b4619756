"""How long `satellite-asr serve` takes to be ready, how much memory it holds then, and how long it
takes to exit on SIGTERM: what a user waits for when the add-on or the service restarts.

Each run starts the daemon of the checkout it is run from (`python -m satellite_asr`, so run it from
the checkout's root with the project's venv), on loopback, without zeroconf or Wyoming, and polls
`/health` until it answers 200 (the engine loaded and probed, Silero loaded). It then reads the
process's resident memory and sends SIGTERM. Medians over `--runs`; to compare two versions, run
each from its own checkout (`git worktree add`) in turns on the same machine.

    .venv/bin/python scripts/bench_startup.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.05
READY_WITHIN_S = 120.0


@dataclass(frozen=True)
class Run:
    ready_s: float
    rss_mb: float
    exit_s: float


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def one_run(port: int) -> Run:
    command = [sys.executable, "-m", "satellite_asr", "serve", "--host", "127.0.0.1", "--http-port", str(port)]
    command += ["--no-zeroconf", "--wyoming-uri", "none"]
    started = time.monotonic()
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not healthy(port):
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode} before it was ready")
            if time.monotonic() - started > READY_WITHIN_S:
                raise SystemExit(f"the daemon was not ready within {READY_WITHIN_S:g} s")
            time.sleep(POLL_S)
        ready_s = time.monotonic() - started
        memory = rss_mb(daemon.pid)
        stopping = time.monotonic()
        daemon.terminate()
        daemon.wait(60)
        return Run(ready_s, memory, time.monotonic() - stopping)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--port", type=int, default=18700, help="the first run's HTTP port; each run takes the next")
    args = parser.parse_args()
    runs = []
    for number in range(args.runs):
        run = one_run(args.port + number)
        runs.append(run)
        print(f"run {number + 1}: ready {run.ready_s:.2f} s, {run.rss_mb:.0f} MB resident, exit {run.exit_s:.2f} s")
    print(
        f"median: ready {statistics.median(r.ready_s for r in runs):.2f} s, "
        f"{statistics.median(r.rss_mb for r in runs):.0f} MB resident, "
        f"exit {statistics.median(r.exit_s for r in runs):.2f} s"
    )


if __name__ == "__main__":
    main()
