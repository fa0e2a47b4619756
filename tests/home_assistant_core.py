"""A real Home Assistant core on 127.0.0.1 for tests, as a subprocess: Home Assistant's own code
answers where tests/home_assistant_double.py holds what we believe it says.

It runs from its own venv (`.venv-ha`, made by scripts/home-assistant-venv; `HA_VENV` for another
place) with a minimal configuration, is onboarded over its HTTP API, and is given its floors, areas,
entities and exposure over its WebSocket API, as a person would in its settings. Without that venv
its tests skip, except in CI (`CI=true`), where a skip would hide a broken install, so they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.homeassistant.names import EntityNames, HomeNames, Place, rank_names
from tests.helpers import free_port, tool_missing

ROOT = Path(__file__).resolve().parent.parent
HA_VENV = Path(os.environ.get("HA_VENV") or ROOT / ".venv-ha")
HASS = HA_VENV / "bin" / "hass"
MISSING = f"needs a Home Assistant core at {HASS}: make it with scripts/home-assistant-venv"
CUSTOM_COMPONENTS = Path(__file__).resolve().parent / "fixtures" / "home_assistant" / "custom_components"
"""Ours: start_gate, with which a test holds a restarted Home Assistant in its start."""
START_TIMEOUT_S = 120.0
"""Home Assistant answers in about 5 s here; a loaded CI machine may take many times that."""


CONFIGURATION = """\
homeassistant:
  name: Satellite test home
  latitude: 52.1
  longitude: 4.3
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
config:
conversation:
input_boolean:
start_gate:
template:
  - light:
      - name: Porch lantern
        unique_id: porch-lantern
        turn_on: []
        turn_off: []
      - name: Spare bulb
        unique_id: spare-bulb
        turn_on: []
        turn_off: []
      - name: Garden spots
        turn_on: []
        turn_off: []
"""
"""Only what the names need: `config` has the registry commands, `conversation` is Assist (it sets
the default exposure: lights are exposed to it, input booleans not), template lights are entities
with a registry entry (`unique_id`) or, Garden spots, without one; `start_gate` is ours
(`CUSTOM_COMPONENTS`). Home Assistant adds its default integrations (frontend, person,
onboarding...), all in .venv-ha. The wyoming integration needs none: it is added by its config flow
(and brings assist_pipeline)."""


EXPECTED = HomeNames(
    entities=(
        EntityNames("input_boolean.kettle", "Kettle", ("Brew station",)),
        EntityNames("light.garden_spots", "Garden spots"),
        EntityNames("light.porch_lantern", "Porch lantern", ("Lantern",)),
    ),
    areas=(Place("Belfry"), Place("Scullery", ("Back kitchen",)), Place("Snug")),
    floors=(Place("Attic storey"), Place("Ground floor", ("Downstairs",))),
)
"""What the client must read from the home `home_assistant` sets up: not Guest mode (not exposed),
not Spare bulb (exposed, then disabled), not onboarding's own areas (deleted)."""
EXPECTED_NAMES = len(rank_names(EXPECTED, 100))


class Admin:
    """An administrator's WebSocket API connection, to change the home as the settings pages do."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self.events: list[str] = []
        """The types of the events that came on this connection, were any subscribed."""

    async def command(self, kind: str, **fields: Any) -> Any:
        """The result of the command of type `kind`; fails the test on an error answer."""
        self._next_id += 1
        await self._ws.send_json({"id": self._next_id, "type": kind, **fields})
        while (answer := await self._ws.receive_json(timeout=30))["type"] == "event":
            self.events.append(answer["event"]["event_type"])
        assert answer["id"] == self._next_id and answer["success"], answer
        return answer["result"]

    async def event(self) -> dict[str, Any]:
        """The next event on this connection (of a subscription, or of a pipeline run)."""
        message = await self._ws.receive_json(timeout=30)
        assert message["type"] == "event", message
        return dict(message["event"])

    async def send_bytes(self, data: bytes) -> None:
        """A binary message, such as a pipeline run's audio."""
        await self._ws.send_bytes(data)

    async def wait_running(self) -> None:
        """Until Home Assistant has set up every integration, so that their entities exist."""
        await self.command("subscribe_events", event_type="homeassistant_started")
        if (await self.command("get_config"))["state"] == "RUNNING":
            return
        while "homeassistant_started" not in self.events:
            self.events.append((await self._ws.receive_json(timeout=START_TIMEOUT_S))["event"]["event_type"])


@asynccontextmanager
async def admin_connection(url: str, token: str) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/api/websocket") as ws:
        assert (await ws.receive_json(timeout=30))["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": token})
        assert (await ws.receive_json(timeout=30))["type"] == "auth_ok"
        yield Admin(ws)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a server as its service manager would (SIGTERM, its own clean stop), killed if it hangs."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RealHomeAssistant:
    """Home Assistant core as a subprocess on a config dir of its own; stop() and start() again on
    the same dir and port are a restart."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        """A long-lived access token of the owner (an administrator), once `onboard` has run."""
        self._process: subprocess.Popen[bytes] | None = None
        self.gate = config_dir / "start_gate.open"
        """While this file is missing, Home Assistant's start waits (`CUSTOM_COMPONENTS`)."""
        self.gate.touch()
        (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        shutil.copytree(CUSTOM_COMPONENTS, config_dir / "custom_components")

    def start(self) -> None:
        """Start Home Assistant and wait until its HTTP API answers (`--skip-pip`: .venv-ha has all)."""
        with (self.config_dir / "hass.out").open("ab") as out:
            command = [str(HASS), "--config", str(self.config_dir), "--skip-pip"]
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"Home Assistant exited ({self._process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/manifest.json", timeout=5):
                    return
            except OSError:  # refused, or an HTTP error (urllib's are OSErrors): not up yet
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"Home Assistant did not answer in {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, 60)
            self._process = None

    def log_tail(self) -> str:
        return "\n".join((self.config_dir / "hass.out").read_text(errors="replace").splitlines()[-40:])

    async def onboard(self) -> None:
        """Make the owner with the onboarding API (no browser) and get a long-lived token for them."""
        client_id = f"{self.url}/"
        user = {"client_id": client_id, "name": "Owner", "username": "owner", "password": "a-test-password"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.url}/api/onboarding/users", json=user | {"language": "en"}) as response:
                assert response.status == 200, await response.text()
                code = (await response.json())["auth_code"]
            grant = {"grant_type": "authorization_code", "code": code, "client_id": client_id}
            async with http.post(f"{self.url}/auth/token", data=grant) as response:
                assert response.status == 200, await response.text()
                access_token = (await response.json())["access_token"]
        async with admin_connection(self.url, access_token) as admin:
            self.token = await admin.command("auth/long_lived_access_token", client_name="satellite-asr", lifespan=1)
            await admin.wait_running()

    async def user_token(self) -> str:
        """An access token of a user who is not an administrator: made with the users API, logged
        in with the login flow (as the login page does)."""
        client_id, login = f"{self.url}/", {"username": "resident", "password": "another-test-password"}
        async with admin_connection(self.url, self.token) as admin:
            user = (await admin.command("config/auth/create", name="Resident", group_ids=["system-users"]))["user"]
            await admin.command("config/auth_provider/homeassistant/create", user_id=user["id"], **login)
        flow = {"client_id": client_id, "handler": ["homeassistant", None], "redirect_uri": client_id}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.url}/auth/login_flow", json=flow) as response:
                flow_id = (await response.json())["flow_id"]
            async with http.post(
                f"{self.url}/auth/login_flow/{flow_id}", json={"client_id": client_id} | login
            ) as response:
                step = await response.json()
                assert step["type"] == "create_entry", step
            grant = {"grant_type": "authorization_code", "code": step["result"], "client_id": client_id}
            async with http.post(f"{self.url}/auth/token", data=grant) as response:
                return str((await response.json())["access_token"])

    async def furnish(self) -> None:
        """Give the home the floors, areas, entities and exposure `EXPECTED` describes."""
        async with admin_connection(self.url, self.token) as admin:
            for area in await admin.command("config/area_registry/list"):  # onboarding's Living Room, Kitchen...
                await admin.command("config/area_registry/delete", area_id=area["area_id"])
            ground = await admin.command("config/floor_registry/create", name="Ground floor", aliases=["Downstairs"])
            attic = await admin.command("config/floor_registry/create", name="Attic storey", level=2)
            create_area = "config/area_registry/create"
            await admin.command(create_area, name="Scullery", aliases=["Back kitchen"], floor_id=ground["floor_id"])
            await admin.command(create_area, name="Snug", floor_id=ground["floor_id"])
            await admin.command(create_area, name="Belfry", floor_id=attic["floor_id"])
            await admin.command("input_boolean/create", name="Kettle")
            await admin.command("input_boolean/create", name="Guest mode")
            await admin.command("config/entity_registry/update", entity_id="light.porch_lantern", aliases=["Lantern"])
            await admin.command(
                "config/entity_registry/update", entity_id="input_boolean.kettle", aliases=["Brew station"]
            )
            await admin.command("homeassistant/expose_entity", **exposure("input_boolean.kettle", True))
            # Assist's own default for an input boolean; said here so that the test does not depend on it
            await admin.command("homeassistant/expose_entity", **exposure("input_boolean.guest_mode", False))
            await admin.command("config/entity_registry/update", entity_id="light.spare_bulb", disabled_by="user")
            exposed = (await admin.command("homeassistant/expose_entity/list"))["exposed_entities"]
        assert {"light.porch_lantern", "light.garden_spots", "light.spare_bulb"} <= exposed.keys(), (
            "lights are exposed to Assist by default, a disabled one stays so"
        )


def exposure(entity_id: str, should_expose: bool) -> dict[str, Any]:
    """The fields of `homeassistant/expose_entity` for Assist (Home Assistant's `conversation`)."""
    return {"assistants": ["conversation"], "entity_ids": [entity_id], "should_expose": should_expose}


CHUNK_S = 0.04
"""The microphone's chunk: the frontend sends each as it is recorded."""
SILENCE_AFTER_S = 5.0
"""How long the microphone goes on after the command (silence) if Home Assistant has not heard the
command end; its own VAD needs 0.7 s of it."""
PIPELINE = {
    "name": "Satellite ASR",
    "language": "en",
    "conversation_engine": "conversation.home_assistant",
    "conversation_language": "en",
    "stt_language": "en",
    "tts_engine": None,
    "tts_language": None,
    "tts_voice": None,
    "wake_word_entity": None,
    "wake_word_id": None,
}
"""An Assist pipeline as the voice assistants settings page makes it, but for its stt_engine."""


def bearer(home_assistant: RealHomeAssistant) -> dict[str, str]:
    """The header of an HTTP API request with the owner's token."""
    return {"Authorization": f"Bearer {home_assistant.token}"}


async def add_wyoming_service(home_assistant: RealHomeAssistant, port: int) -> dict[str, Any]:
    """What the "Add integration" dialog does for Wyoming Protocol: start its config flow, fill in
    its one form (host and port); the flow's last answer."""
    flows = f"{home_assistant.url}/api/config/config_entries/flow"
    async with aiohttp.ClientSession(headers=bearer(home_assistant)) as http:
        async with http.post(flows, json={"handler": "wyoming", "show_advanced_options": False}) as response:
            assert response.status == 200, await response.text()
            form = await response.json()
        assert form["type"] == "form" and form["step_id"] == "user", form
        async with http.post(f"{flows}/{form['flow_id']}", json={"host": "127.0.0.1", "port": port}) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())


@asynccontextmanager
async def wyoming_speech_to_text(home_assistant: RealHomeAssistant, port: int) -> AsyncIterator[str]:
    """Our daemon's Wyoming server on `port` added to Home Assistant; the id of the speech-to-text
    entity it made, once its config entry has loaded. The entry is removed on exit."""
    result = await add_wyoming_service(home_assistant, port)
    assert result["type"] == "create_entry", result
    entry_id = result["result"]["entry_id"]
    try:
        assert result["result"]["state"] == "loaded", "Home Assistant sets an entry up before the flow ends"
        async with admin_connection(home_assistant.url, home_assistant.token) as admin:
            entities = await admin.command("config/entity_registry/list")
            made = [e["entity_id"] for e in entities if e["config_entry_id"] == entry_id]
            assert len(made) == 1 and made[0].startswith("stt."), made
        yield made[0]
    finally:
        entry = f"{home_assistant.url}/api/config/config_entries/entry/{entry_id}"
        async with aiohttp.ClientSession(headers=bearer(home_assistant)) as http, http.delete(entry) as response:
            assert response.status == 200, await response.text()


@asynccontextmanager
async def assist_pipeline(home_assistant: RealHomeAssistant, stt_engine: str) -> AsyncIterator[str]:
    """An Assist pipeline with `stt_engine` as its speech-to-text; its id. Deleted on exit, on a
    connection of its own: Home Assistant closes one left unread for a minute (its heartbeat's
    pings go unanswered), as a benchmark's long use of the pipeline would."""
    async with admin_connection(home_assistant.url, home_assistant.token) as admin:
        pipeline = await admin.command("assist_pipeline/pipeline/create", stt_engine=stt_engine, **PIPELINE)
    try:
        yield str(pipeline["id"])
    finally:
        async with admin_connection(home_assistant.url, home_assistant.token) as admin:
            await admin.command("assist_pipeline/pipeline/delete", pipeline_id=pipeline["id"])


async def microphone(
    send: Callable[[bytes], Awaitable[None]], handler_id: int, pcm: bytes, heard: asyncio.Event, origin: float
) -> None:
    """The frontend's microphone, recording from `origin` (`time.monotonic()`): `pcm` then silence,
    each chunk sent once it would have been recorded, prefixed with the run's binary handler id,
    until Home Assistant has heard the command (`heard`); if it never does, the empty message that
    ends the stream."""
    chunk_bytes = round(CHUNK_S * SAMPLE_RATE) * 2
    audio = pcm + bytes(round(SILENCE_AFTER_S * SAMPLE_RATE) * 2)
    for offset in range(0, len(audio), chunk_bytes):
        recorded = origin + (offset + chunk_bytes) / 2 / SAMPLE_RATE
        with suppress(TimeoutError):
            await asyncio.wait_for(heard.wait(), max(0.0, recorded - time.monotonic()))
        if heard.is_set():
            return
        await send(bytes([handler_id]) + audio[offset : offset + chunk_bytes])
    await send(bytes([handler_id]))


async def run_speech_to_text(
    home_assistant: RealHomeAssistant, pipeline_id: str, pcm: bytes
) -> list[tuple[float, dict[str, Any]]]:
    """The events of an Assist pipeline run from speech to text (only), `pcm` its microphone; each
    with when it came, in seconds on the audio's clock (0: the first sample was recorded), which is
    what scripts/bench_home_assistant.py times against the voice's end."""
    async with admin_connection(home_assistant.url, home_assistant.token) as admin:
        run = {"start_stage": "stt", "end_stage": "stt", "input": {"sample_rate": SAMPLE_RATE}}
        await admin.command("assist_pipeline/run", pipeline=pipeline_id, **run)
        first = await admin.event()
        assert first["type"] == "run-start", first
        heard = asyncio.Event()
        handler_id = first["data"]["runner_data"]["stt_binary_handler_id"]
        origin = time.monotonic()
        events = [(0.0, first)]
        speaking = asyncio.create_task(microphone(admin.send_bytes, handler_id, pcm, heard, origin))
        try:
            while events[-1][1]["type"] not in ("run-end", "error"):
                event = await admin.event()
                events.append((time.monotonic() - origin, event))
                if event["type"] in ("stt-end", "error"):
                    heard.set()
        finally:
            heard.set()
            await speaking
    return events


def require_home_assistant() -> None:
    """A skip (or, in CI, a failure) where this machine has no Home Assistant core in `HA_VENV`."""
    if os.environ.get("HA_UNAVAILABLE"):  # .ci/run found no Python for it: said in the skip, not hidden
        pytest.skip(f"no real Home Assistant: {os.environ['HA_UNAVAILABLE']}")
    if not os.access(HASS, os.X_OK):
        tool_missing(MISSING)


@contextmanager
def furnished_home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHomeAssistant]:
    """A started, onboarded and furnished Home Assistant, stopped on exit (`require_home_assistant`)."""
    require_home_assistant()
    home_assistant = RealHomeAssistant(tmp_path_factory.mktemp("home-assistant"))
    home_assistant.start()
    try:
        asyncio.run(home_assistant.onboard())
        asyncio.run(home_assistant.furnish())
        yield home_assistant
    finally:
        home_assistant.stop()
