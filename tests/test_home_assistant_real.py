"""The names client against a real Home Assistant core (tests/home_assistant_core.py), not our stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from satellite_asr.homeassistant.client import HomeAssistantNames, State
from satellite_asr.homeassistant.names import HomeNames
from tests.helpers import eventually, running_daemon
from tests.home_assistant_core import (
    EXPECTED,
    EXPECTED_NAMES,
    HA_VENV,
    ROOT,
    RealHomeAssistant,
    admin_connection,
    exposure,
    furnished_home_assistant,
    require_home_assistant,
)

pytestmark = pytest.mark.timeout(300)


def sorted_home(home: HomeNames) -> HomeNames:
    """`home` in a fixed order (Home Assistant's own order is that of creation)."""
    return HomeNames(
        tuple(sorted(home.entities, key=lambda entity: entity.entity_id)),
        tuple(sorted(home.areas, key=lambda place: place.name)),
        tuple(sorted(home.floors, key=lambda place: place.name)),
    )


@pytest.fixture(scope="module")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHomeAssistant]:
    """A furnished Home Assistant for the module's tests; each test leaves the home as it found it."""
    with furnished_home_assistant(tmp_path_factory) as home_assistant:
        yield home_assistant


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


def test_the_venv_script_completes_a_venv_cut_short_before_its_pip(tmp_path: Path) -> None:
    """`python -m venv` stopped before it made the pip leaves a python without pip, on which the
    script failed at every run ("No module named pip"): it must make the pip. (Its install then fails
    here, without an index: only the repair is tested.)"""
    require_home_assistant()
    python = HA_VENV / "bin" / "python"
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    env = os.environ | {"HA_VENV": str(venv), "HA_PYTHON": str(python), "PIP_NO_INDEX": "1"}
    script = ROOT / "scripts" / "home-assistant-venv"
    result = subprocess.run([script], env=env, capture_output=True, text=True, timeout=300)
    assert "No matching distribution found for homeassistant" in result.stderr, result.stderr
    assert subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], timeout=60).returncode == 0
