"""The Home Assistant names client against HomeAssistantDouble on 127.0.0.1: load, follow, survive."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest

from satellite_asr.homeassistant.client import HomeAssistantNames, State, websocket_url
from satellite_asr.homeassistant.names import HomeNames, rank_names
from tests.helpers import free_port
from tests.home_assistant_double import EXPOSED_NAMES, HOME, HomeAssistantDouble, running_home_assistant

pytestmark = pytest.mark.timeout(60)

TOKEN = "long-lived-token-3f9a7c"  # a test value, and what must never be logged


@pytest.fixture
async def home_assistant() -> AsyncIterator[HomeAssistantDouble]:
    async with running_home_assistant(TOKEN) as double:
        yield double


def client_for(url: str, token: str = TOKEN) -> HomeAssistantNames:
    return HomeAssistantNames(url, token, refresh_delay_s=0.2, backoff_s=(0.05, 0.2))


async def test_reads_exposed_entities_aliases_areas_and_floors(home_assistant: HomeAssistantDouble) -> None:
    client = client_for(home_assistant.url)
    await client.start()
    try:
        await client.wait_loaded()
    finally:
        await client.stop()
    assert client.home == HomeNames.from_json(HOME), "exposed entities only, with their aliases; areas, floors"
    names = client.names(2000)
    assert {"Calloway blinds", "Zebedee", "Robot vacuum", "Marigold room", "The Snug", "Belvedere floor"} <= set(names)
    assert "Phone battery" not in names, "not exposed to Assist"
    status = client.status
    assert status.state == State.LOADED and status.names == len(names) == EXPOSED_NAMES
    assert status.loaded_at is not None and status.last_error is None
    assert home_assistant.commands[:3] == ["subscribe_events"] * 3


async def test_a_registry_change_is_read_again_once_per_burst(home_assistant: HomeAssistantDouble) -> None:
    client = client_for(home_assistant.url)
    await client.start()
    try:
        first = await client.wait_loaded()
        home_assistant.home["areas"].append({"id": "larkspur", "name": "Larkspur attic", "aliases": ["Crow's nest"]})
        home_assistant.home["entities"][0]["aliases"].append("Sun shades")
        for _ in range(3):
            assert await home_assistant.push_event("area_registry_updated", {"action": "create", "area_id": "x"}) == 1
        assert await home_assistant.push_event("entity_registry_updated", {"action": "update"}) == 1
        await client.wait_loaded(first)
    finally:
        await client.stop()
    assert {"Larkspur attic", "Crow's nest", "Sun shades"} <= set(client.names(1000))
    assert home_assistant.commands.count("config/area_registry/list") == 2, "four events, one refresh"


async def test_survives_a_restart_keeping_the_last_names(home_assistant: HomeAssistantDouble) -> None:
    client = client_for(home_assistant.url)
    await client.start()
    try:
        first = await client.wait_loaded()
        await home_assistant.stop()
        await asyncio.wait_for(client.wait_for(State.UNREACHABLE), 10)
        assert client.status.names == EXPOSED_NAMES and "Calloway blinds" in client.names(1000), "last good names kept"
        assert client.status.last_error
        home_assistant.home["floors"].append({"id": "cellar", "name": "Undercroft", "aliases": []})
        await home_assistant.start()
        await client.wait_loaded(first)
    finally:
        await client.stop()
    assert client.status.state == State.LOADED and "Undercroft" in client.names(1000)


async def test_a_wrong_token_is_a_status_and_a_log_line_never_the_token(
    home_assistant: HomeAssistantDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-77b1e0"
    client = client_for(home_assistant.url, wrong)
    await client.start()
    try:
        await asyncio.wait_for(client.wait_for(State.AUTH_FAILED), 10)
    finally:
        await client.stop()
    status = client.status.as_dict()
    assert status["state"] == "auth_failed" and status["names"] == 0 and status["loaded_at"] is None
    assert "Invalid access token" in status["last_error"]
    assert any(r.levelno == logging.ERROR and "refused the access token" in r.getMessage() for r in caplog.records)
    assert wrong not in caplog.text and wrong not in json.dumps(status)
    assert client.names(100) == []


async def test_nothing_listening_is_unreachable() -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}")
    await client.start()
    try:
        await asyncio.wait_for(client.wait_for(State.UNREACHABLE), 10)
    finally:
        await client.stop()
    assert client.status.last_error and TOKEN not in client.status.last_error


def test_websocket_url() -> None:
    assert websocket_url("http://homeassistant.local:8123") == "ws://homeassistant.local:8123/api/websocket"
    assert websocket_url("https://ha.example.org/") == "wss://ha.example.org/api/websocket"
    assert websocket_url("http://supervisor/core") == "ws://supervisor/core/websocket"
    assert websocket_url("ws://10.0.0.2:8123/api/websocket") == "ws://10.0.0.2:8123/api/websocket"
    with pytest.raises(ValueError, match="not a Home Assistant URL"):
        websocket_url("homeassistant.local:8123")


def test_fixture_home_ranks_all_exposed_names() -> None:
    assert len(rank_names(HomeNames.from_json(HOME), 2000)) == EXPOSED_NAMES
