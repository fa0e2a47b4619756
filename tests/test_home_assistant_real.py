"""The names client against a real Home Assistant core on 127.0.0.1, not our stand-in.

tests/home_assistant_double.py encodes what we believe Home Assistant's WebSocket API says; here
Home Assistant's own code answers. It runs from its own venv (`.venv-ha`, made by
scripts/home-assistant-venv; `HA_VENV` for another place) as a subprocess with a minimal
configuration, is onboarded over its HTTP API, and is given its floors, areas, entities and
exposure over its WebSocket API, as a person would in its settings. Without that venv the tests
skip, except in CI (`CI=true`), where a skip would hide a broken install, so they fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from satellite_asr.homeassistant.client import HomeAssistantNames, State
from satellite_asr.homeassistant.names import EntityNames, HomeNames, Place, rank_names
from tests.helpers import eventually, free_port, running_daemon

ROOT = Path(__file__).resolve().parent.parent
HA_VENV = Path(os.environ.get("HA_VENV") or ROOT / ".venv-ha")
HASS = HA_VENV / "bin" / "hass"
MISSING = f"needs a Home Assistant core at {HASS}: make it with scripts/home-assistant-venv"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CUSTOM_COMPONENTS = Path(__file__).resolve().parent / "fixtures" / "home_assistant" / "custom_components"
"""Ours: start_gate, with which a test holds a restarted Home Assistant in its start."""
START_TIMEOUT_S = 120.0
"""Home Assistant answers in about 5 s here; a loaded CI machine may take many times that."""

pytestmark = pytest.mark.timeout(300)

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
light:
  - platform: template
    lights:
      porch_lantern:
        unique_id: porch-lantern
        friendly_name: Porch lantern
        turn_on: []
        turn_off: []
      spare_bulb:
        unique_id: spare-bulb
        friendly_name: Spare bulb
        turn_on: []
        turn_off: []
      garden_spots:
        friendly_name: Garden spots
        turn_on: []
        turn_off: []
"""
"""Only what the names need: `config` has the registry commands, `conversation` is Assist (it sets
the default exposure: lights are exposed to it, input booleans not), template lights are entities
with a registry entry (`unique_id`) or, Garden spots, without one; `start_gate` is ours
(`CUSTOM_COMPONENTS`). Home Assistant adds its default integrations (frontend, person,
onboarding...), all in .venv-ha."""


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


def sorted_home(home: HomeNames) -> HomeNames:
    """`home` in a fixed order (Home Assistant's own order is that of creation)."""
    return HomeNames(
        tuple(sorted(home.entities, key=lambda entity: entity.entity_id)),
        tuple(sorted(home.areas, key=lambda place: place.name)),
        tuple(sorted(home.floors, key=lambda place: place.name)),
    )


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
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"Home Assistant did not answer in {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop it as its service manager would (SIGTERM, its own clean stop), killed if it hangs."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
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


@pytest.fixture(scope="module")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHomeAssistant]:
    """A furnished Home Assistant for the module's tests; each test leaves the home as it found it."""
    if os.environ.get("HA_UNAVAILABLE"):  # .ci/run found no Python for it: said in the skip, not hidden
        pytest.skip(f"no real Home Assistant: {os.environ['HA_UNAVAILABLE']}")
    if not os.access(HASS, os.X_OK):
        if IN_CI:
            pytest.fail(f"CI={os.environ['CI']}: {MISSING}", pytrace=False)
        pytest.skip(MISSING)
    home_assistant = RealHomeAssistant(tmp_path_factory.mktemp("home-assistant"))
    home_assistant.start()
    try:
        asyncio.run(home_assistant.onboard())
        asyncio.run(home_assistant.furnish())
        yield home_assistant
    finally:
        home_assistant.stop()


def client_for(home_assistant: RealHomeAssistant, token: str | None = None) -> HomeAssistantNames:
    token = home_assistant.token if token is None else token
    return HomeAssistantNames(home_assistant.url, lambda: token, refresh_delay_s=0.2, backoff_s=(0.1, 0.5))


async def test_reads_what_home_assistant_exposes_to_assist(home_assistant: RealHomeAssistant) -> None:
    client = client_for(home_assistant)
    await client.start()
    try:
        await asyncio.wait_for(client.wait_loaded(), 30)
    finally:
        await client.stop()
    assert sorted_home(client.home) == EXPECTED
    assert client.status.state == State.LOADED and client.status.last_error is None
    assert client.status.names == EXPECTED_NAMES and "Guest mode" not in client.names(100)


async def test_each_change_in_home_assistant_reaches_the_names(home_assistant: RealHomeAssistant) -> None:
    """An area renamed, a floor's alias, an entity's alias, an entity exposed, an entity renamed (its
    friendly name is in its state, which Home Assistant writes after the registry event): one at a
    time, so that each must come by its own registry event; then each undone, which must come too."""
    client = client_for(home_assistant)
    await client.start()
    try:
        await asyncio.wait_for(client.wait_loaded(), 30)
        async with admin_connection(home_assistant.url, home_assistant.token) as admin:
            snug = next(a for a in await admin.command("config/area_registry/list") if a["name"] == "Snug")
            attic = next(f for f in await admin.command("config/floor_registry/list") if f["name"] == "Attic storey")
            lantern, kettle = "light.porch_lantern", "input_boolean.kettle"
            changes: list[tuple[str, str, dict[str, Any]]] = [
                ("Den", "config/area_registry/update", {"area_id": snug["area_id"], "name": "Den"}),
                (
                    "Crow's nest",
                    "config/floor_registry/update",
                    {"floor_id": attic["floor_id"], "aliases": ["Crow's nest"]},
                ),
                (
                    "Lamp by the door",
                    "config/entity_registry/update",
                    {"entity_id": lantern, "aliases": ["Lantern", "Lamp by the door"]},
                ),
                ("Guest mode", "homeassistant/expose_entity", exposure("input_boolean.guest_mode", True)),
                ("Tea kettle", "config/entity_registry/update", {"entity_id": kettle, "name": "Tea kettle"}),
            ]
            undo: list[tuple[str, dict[str, Any]]] = [
                ("config/area_registry/update", {"area_id": snug["area_id"], "name": "Snug"}),
                ("config/floor_registry/update", {"floor_id": attic["floor_id"], "aliases": []}),
                ("config/entity_registry/update", {"entity_id": lantern, "aliases": ["Lantern"]}),
                ("homeassistant/expose_entity", exposure("input_boolean.guest_mode", False)),
                ("config/entity_registry/update", {"entity_id": kettle, "name": None}),
            ]
            try:
                for name, kind, fields in changes:
                    await admin.command(kind, **fields)
                    await eventually(lambda name=name: name in client.names(100), 30)
                assert not {"Snug", "Kettle"} & set(client.names(100)), "the old names are gone"
            finally:
                for kind, fields in undo:
                    await admin.command(kind, **fields)
        await eventually(lambda: sorted_home(client.home) == EXPECTED, 30)
    finally:
        await client.stop()


async def test_an_exposure_no_event_announces_is_read_at_the_next_reread(home_assistant: RealHomeAssistant) -> None:
    """Garden spots has no `unique_id`: Home Assistant keeps its exposure outside the registry and
    sends no event when it changes; the periodic read (`reread_s`) finds it."""
    client = HomeAssistantNames(home_assistant.url, lambda: home_assistant.token, refresh_delay_s=0.2, reread_s=1.0)
    await client.start()
    try:
        await asyncio.wait_for(client.wait_loaded(), 30)
        assert "Garden spots" in client.names(100)
        async with admin_connection(home_assistant.url, home_assistant.token) as admin:
            await admin.command("homeassistant/expose_entity", **exposure("light.garden_spots", False))
            try:
                await eventually(lambda: "Garden spots" not in client.names(100), 30)
            finally:
                await admin.command("homeassistant/expose_entity", **exposure("light.garden_spots", True))
        await eventually(lambda: sorted_home(client.home) == EXPECTED, 30)
    finally:
        await client.stop()


async def test_a_wrong_token_is_an_auth_failure(
    home_assistant: RealHomeAssistant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-" + home_assistant.token[:20]
    client = client_for(home_assistant, wrong)
    await client.start()
    try:
        status = await asyncio.wait_for(client.wait_for(State.AUTH_FAILED), 30)
    finally:
        await client.stop()
    assert status.last_error == "Invalid access token or password", "Home Assistant's own words"
    assert status.names == 0 and client.names(100) == []
    assert any(r.levelno == logging.ERROR and "refused the access token" in r.getMessage() for r in caplog.records)
    assert wrong not in caplog.text


async def test_a_user_who_is_not_an_administrator_is_told_so(home_assistant: RealHomeAssistant) -> None:
    """Home Assistant lets such a user in, then refuses what only an administrator may read."""
    client = client_for(home_assistant, await home_assistant.user_token())
    await client.start()
    try:
        status = await asyncio.wait_for(client.wait_for(State.AUTH_FAILED), 30)
    finally:
        await client.stop()
    assert status.last_error is not None and "the token must be an administrator's" in status.last_error
    assert status.names == 0 and client.names(100) == []


async def test_the_daemon_shows_the_names_in_its_health(home_assistant: RealHomeAssistant) -> None:
    async with running_daemon(ha_url=home_assistant.url, ha_token=home_assistant.token) as daemon:
        assert daemon.core.home_assistant is not None
        await asyncio.wait_for(daemon.core.home_assistant.wait_loaded(), 30)
        url = f"http://127.0.0.1:{daemon.http_port}/health"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
    status = json.loads(text)["home_assistant"]
    assert status["state"] == "loaded" and status["names"] == EXPECTED_NAMES and status["last_error"] is None
    assert home_assistant.token not in text


async def test_a_restarted_home_assistant_is_read_again_once_it_has_started(
    home_assistant: RealHomeAssistant,
) -> None:
    """Its token, registries and exposure outlive the restart. Home Assistant answers on its
    WebSocket API before its integrations are set up (held here by the start gate): the client must
    keep the last good names until Home Assistant says it has started, then read them again."""
    client = client_for(home_assistant)
    await client.start()
    try:
        first = await asyncio.wait_for(client.wait_loaded(), 30)
        await asyncio.to_thread(home_assistant.stop)
        await asyncio.wait_for(client.wait_for(State.UNREACHABLE), 30)
        assert sorted_home(client.home) == EXPECTED, "the last good names, kept"
        home_assistant.gate.unlink()
        try:
            await asyncio.to_thread(home_assistant.start)
            await asyncio.wait_for(client.wait_for(State.STARTING), 30)
            assert client.loads == first and sorted_home(client.home) == EXPECTED, "nothing read while it starts"
        finally:
            home_assistant.gate.touch()
        await asyncio.wait_for(client.wait_loaded(first), 60)
    finally:
        await client.stop()
    assert sorted_home(client.home) == EXPECTED and client.status.state == State.LOADED
