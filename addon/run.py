#!/usr/bin/env python3
"""The add-on's entry point: `/data/options.json` -> `satellite-asr serve` flags, then Supervisor
discovery once the Wyoming server answers `describe`, so Home Assistant offers to set it up.

Also the image's health check (`--healthcheck`: does the Wyoming server answer `describe`?).
Standard library only; `--print-command` shows the command line without running it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("satellite-asr-addon")

OPTIONS_FILE = "/data/options.json"
SUPERVISOR_URL = os.environ.get("SUPERVISOR_URL", "http://supervisor")
"""Where the Supervisor API is (tests point it at a stand-in)."""
DISCOVERY_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits between discovery attempts: the Supervisor can be busy (restarting, updating) when we start."""
SECRET_OPTIONS = {"remote_api_key", "api_key"}
"""Passed in the daemon's environment (SATELLITE_ASR_<NAME>), never on its logged command line."""
HOME_ASSISTANT_NAMES = ("homeassistant.local", "homeassistant")
"""The names of Home Assistant's host, by which browsers and satellites reach the add-on's ports:
always allowed, besides the add-on's own container names, which are all the daemon knows of."""


def secret_environment(options: dict[str, Any], supervisor_token: str | None) -> dict[str, str]:
    """The secret options, and Home Assistant's API through the Supervisor for the household names.

    The add-on's `homeassistant_api: true` gives it the `SUPERVISOR_TOKEN`, which the Supervisor's
    `/core` proxy accepts as a Home Assistant token: nothing for the user to paste.
    """
    secrets = {f"SATELLITE_ASR_{name.upper()}": str(options[name]) for name in SECRET_OPTIONS if options.get(name)}
    if supervisor_token:
        secrets["SATELLITE_ASR_HA_URL"] = f"{SUPERVISOR_URL}/core"
        secrets["SATELLITE_ASR_HA_TOKEN"] = supervisor_token
    return secrets


def serve_command(options: dict[str, Any], *, host: str, wyoming_port: int, http_port: int) -> list[str]:
    """Every option is a daemon setting of the same name: `silence_ms: 500` -> `--silence-ms=500`
    (one argument, so that a value starting with `-`, a context of "-Marigold", is not taken for a flag).

    Empty options are left out (the daemon's default applies), secrets too (`secret_environment`).
    Zeroconf stays off: the add-on's container network does not reach the LAN's multicast, and
    Supervisor discovery replaces it. `allowed_hosts` always holds `HOME_ASSISTANT_NAMES`.
    """
    command = [
        "satellite-asr",
        "serve",
        "--host",
        host,
        "--http-port",
        str(http_port),
        "--wyoming-uri",
        f"tcp://{host}:{wyoming_port}",
        "--no-zeroconf",
    ]
    listed = options.get("allowed_hosts") or []
    options = {**options, "allowed_hosts": [*listed, *(name for name in HOME_ASSISTANT_NAMES if name not in listed)]}
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value == "" or name in SECRET_OPTIONS:
            continue
        if isinstance(value, bool):
            command.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            command += [f"{flag}={item}" for item in value]
        else:
            command.append(f"{flag}={value}")
    return command


async def describe_answers(port: int) -> bool:
    """True when the Wyoming server on this host answers `describe` with `info` within 5 s."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b'{"type": "describe"}\n')
                await writer.drain()
                while line := await reader.readline():
                    header = json.loads(line)
                    if header.get("type") == "info":
                        return True
                    await reader.readexactly(header.get("data_length") or 0)
                    await reader.readexactly(header.get("payload_length") or 0)
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError, TypeError, asyncio.IncompleteReadError):
        return False
    return False


def register_discovery(token: str, port: int) -> None:
    """Tell Home Assistant (through the Supervisor) where the Wyoming service is."""
    body = {"service": "wyoming", "config": {"uri": f"tcp://{socket.gethostname()}:{port}"}}
    request = urllib.request.Request(
        f"{SUPERVISOR_URL}/discovery",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


async def announce_when_ready(port: int) -> None:
    token = os.environ.get("SUPERVISOR_TOKEN")
    if not token:
        log.info("no SUPERVISOR_TOKEN (not running under the Supervisor): discovery skipped")
        return
    while True:  # the daemon is another process: poll it
        if await describe_answers(port):
            break
        await asyncio.sleep(0.5)
    for retry_in in (*DISCOVERY_RETRY_S, None):
        try:
            await asyncio.to_thread(register_discovery, token, port)
        except OSError as exc:  # urllib's HTTP and connection errors included
            if retry_in is None:
                log.error("Supervisor discovery failed: %s; add the Wyoming integration by hand", exc)
                return
            log.warning("Supervisor discovery failed: %s; trying again in %g s", exc, retry_in)
            await asyncio.sleep(retry_in)
            continue
        log.info("Supervisor discovery sent: Home Assistant will offer to add the Wyoming service")
        return


async def run(command: list[str], secrets: dict[str, str], wyoming_port: int) -> int:
    """Runs the daemon, forwards SIGTERM/SIGINT to it, announces it once it answers."""
    process = await asyncio.create_subprocess_exec(*command, env={**os.environ, **secrets})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.send_signal, sig)
    announcing = asyncio.create_task(announce_when_ready(wyoming_port))
    code = await process.wait()
    announcing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await announcing
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--options", default=OPTIONS_FILE, help="The add-on options (JSON).")
    parser.add_argument("--host", default="0.0.0.0", help="Address the daemon listens on.")
    parser.add_argument("--wyoming-port", type=int, default=10300)
    parser.add_argument("--http-port", type=int, default=10301)
    parser.add_argument("--print-command", action="store_true", help="Print the daemon's command line and exit.")
    parser.add_argument("--healthcheck", action="store_true", help="Exit 0 if describe is answered, else 1.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.healthcheck:
        return 0 if asyncio.run(describe_answers(args.wyoming_port)) else 1
    try:
        data = Path(args.options).read_bytes()  # json decodes it: a file not in UTF-8 is a ValueError below
    except OSError as exc:  # run by hand, or the image started without the Supervisor
        print(
            f"satellite-asr-addon: cannot read the add-on's options {args.options} ({exc.strerror or exc}): this "
            "entry point runs under the Home Assistant Supervisor; elsewhere run the daemon itself, e.g. docker "
            "run --entrypoint satellite-asr IMAGE serve (the add-on's DOCS.md, Running on a GPU machine)",
            file=sys.stderr,
        )
        return 2
    try:
        options = json.loads(data)
    except ValueError as exc:
        options = exc
    if not isinstance(options, dict):
        why = f" ({options})" if isinstance(options, ValueError) else ""
        print(f"satellite-asr-addon: {args.options} is not a JSON object of add-on options{why}", file=sys.stderr)
        return 2
    command = serve_command(options, host=args.host, wyoming_port=args.wyoming_port, http_port=args.http_port)
    if args.print_command:
        print(shlex.join(command))
        return 0
    log.info("starting: %s", shlex.join(command))
    secrets = secret_environment(options, os.environ.get("SUPERVISOR_TOKEN"))
    return asyncio.run(run(command, secrets, args.wyoming_port))


if __name__ == "__main__":
    sys.exit(main())
