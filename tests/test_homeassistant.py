"""The Home Assistant names client against HomeAssistantDouble on 127.0.0.1: load, follow, survive."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from satellite_asr.config import Settings
from satellite_asr.homeassistant.client import STARTED_EVENT, HomeAssistantNames, State, websocket_url
from satellite_asr.homeassistant.names import HomeNames, rank_names
from tests.helpers import free_port
from tests.home_assistant_double import EXPOSED_NAMES, HOME, HomeAssistantDouble, running_home_assistant

pytestmark = pytest.mark.timeout(60)

TOKEN = "long-lived-token-3f9a7c"  # a test value, and what must never be logged


@pytest.fixture
async def home_assistant() -> AsyncIterator[HomeAssistantDouble]:
    async with running_home_assistant(TOKEN) as double:
        yield double


def client_for(url: str, token: str = TOKEN, **options: Any) -> HomeAssistantNames:
    return HomeAssistantNames(url, lambda: token, **({"refresh_delay_s": 0.2, "backoff_s": (0.05, 0.2)} | options))


async def read_once(home_assistant: HomeAssistantDouble) -> HomeAssistantNames:
    """A client that has read the names once, stopped."""
    client = client_for(home_assistant.url)
    await client.start()
    try:
        await client.wait_loaded()
    finally:
        await client.stop()
    return client


async def test_reads_exposed_entities_aliases_areas_and_floors(home_assistant: HomeAssistantDouble) -> None:
    client = await read_once(home_assistant)
    assert client.home == HomeNames.from_json(HOME), "exposed entities only, with their aliases; areas, floors"
    names = client.names(2000)
    assert {"Calloway blinds", "Zebedee", "Robot vacuum", "Marigold room", "The Snug", "Belvedere floor"} <= set(names)
    assert "Phone battery" not in names, "not exposed to Assist"
    status = client.status
    assert status.state == State.LOADED and status.names == len(names) == EXPOSED_NAMES
    assert status.loaded_at is not None and status.last_error is None
    assert home_assistant.commands[:5] == ["subscribe_events"] * 4 + ["get_config"]


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


async def test_what_no_event_announces_is_read_at_the_next_reread(home_assistant: HomeAssistantDouble) -> None:
    """A friendly name set in YAML changes with no registry event: the periodic read finds it."""
    client = client_for(home_assistant.url, reread_s=0.3)
    await client.start()
    try:
        first = await client.wait_loaded()
        home_assistant.home["entities"][0]["name"] = "Sun shades"
        await client.wait_loaded(first)
    finally:
        await client.stop()
    assert "Sun shades" in client.names(1000)
    assert home_assistant.commands.count("get_states") == client.loads >= 2


async def test_a_reread_that_finds_the_same_names_is_no_log_line_at_info(
    home_assistant: HomeAssistantDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """144 re-reads a day of an unchanged home must not fill the log; a change is still told."""
    caplog.set_level(logging.INFO, logger="satellite_asr.homeassistant.client")
    client = client_for(home_assistant.url, reread_s=0.1)
    await client.start()
    try:
        await client.wait_loaded(2)
        home_assistant.home["entities"][0]["name"] = "Sun shades"
        while "Sun shades" not in client.names(1000):  # a read under way may have missed it
            await client.wait_loaded(client.loads)
    finally:
        await client.stop()
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read ")]
    assert told == [f"read {EXPOSED_NAMES} names from Home Assistant"] * 2, told


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
    assert websocket_url("http://10.0.0.2:8123/api/") == "ws://10.0.0.2:8123/api/websocket", "the API's own URL"
    with pytest.raises(ValueError, match="not a Home Assistant URL"):
        websocket_url("homeassistant.local:8123")
    for port in ("abc", "99999"):
        with pytest.raises(ValueError, match="port is not a number"):
            websocket_url(f"http://homeassistant.local:{port}")
    with pytest.raises(ValueError, match="without a user or password") as refused:
        websocket_url("http://admin:hunter2@10.0.0.2:8123")
    assert "hunter2" not in str(refused.value)


async def test_a_starting_home_assistant_is_read_once_it_has_started(home_assistant: HomeAssistantDouble) -> None:
    """A restarted Home Assistant answers before its integrations have their entities: the names are
    read once it says it has started, and the last good ones are kept until then."""
    client = client_for(home_assistant.url)
    await client.start()
    try:
        first = await client.wait_loaded()
        await home_assistant.stop()
        home_assistant.state = "NOT_RUNNING"  # what Home Assistant says while its integrations set up
        home_assistant.home["floors"].append({"id": "cellar", "name": "Undercroft", "aliases": []})
        await home_assistant.start()
        await asyncio.wait_for(client.wait_for(State.STARTING), 10)
        assert await home_assistant.push_event("area_registry_updated", {"action": "create", "area_id": "x"}) == 1
        await asyncio.sleep(0.5)  # past the refresh delay: a read now would see no entity
        assert client.loads == first and client.status.names == EXPOSED_NAMES, "the last good names, untouched"
        assert "get_states" not in home_assistant.commands[home_assistant.commands.index("get_config", 6) :]
        home_assistant.state = "RUNNING"
        assert await home_assistant.push_event(STARTED_EVENT, {}) == 1
        await client.wait_loaded(first)
    finally:
        await client.stop()
    assert client.status.state == State.LOADED and client.status.names == EXPOSED_NAMES + 1
    assert {"Calloway blinds", "Undercroft"} <= set(client.names(2000))


async def test_a_change_during_a_read_is_read_again(home_assistant: HomeAssistantDouble) -> None:
    client = client_for(home_assistant.url)
    await client.start()
    try:
        first = await client.wait_loaded()
        home_assistant.states_gate.clear()
        reads = home_assistant.commands.count("get_states")
        assert await home_assistant.push_event("entity_registry_updated", {"action": "update"}) == 1
        await home_assistant.until(lambda: home_assistant.commands.count("get_states") > reads)  # reading
        home_assistant.home["areas"].append({"id": "larkspur", "name": "Larkspur attic", "aliases": []})
        assert await home_assistant.push_event("area_registry_updated", {"action": "create", "area_id": "x"}) == 1
        home_assistant.states_gate.set()
        await client.wait_loaded(first + 1)
    finally:
        await client.stop()
    assert "Larkspur attic" in client.names(2000)


@pytest.mark.parametrize(
    ("command", "reply", "error"),
    [
        ("get_states", {"success": False, "error": "boom"}, "get_states failed: unknown_error: boom"),
        ("config/area_registry/list", {"success": True, "result": "Kitchen"}, "areas that are not a JSON list"),
        ("homeassistant/expose_entity/list", {"success": True, "result": []}, "exposed entities that is not"),
        ("get_states", "42", "a message that is not a JSON object"),
        ("get_states", None, "closed the connection"),
        ("get_config", None, "closed the connection"),
    ],
)
async def test_an_answer_not_understood_is_an_error_and_a_retry(
    home_assistant: HomeAssistantDouble, command: str, reply: dict[str, Any] | str | None, error: str
) -> None:
    """Never the end of the names: the error is in the status, and the next connection reads them.
    A connection closed during a read fails its commands at once, not at their timeout (30 s)."""
    home_assistant.replies[command] = reply
    client = client_for(home_assistant.url)
    await client.start()
    try:
        await asyncio.wait_for(client.wait_for(State.UNREACHABLE), 10)
        assert client.status.last_error is not None and error in client.status.last_error
        del home_assistant.replies[command]
        await asyncio.wait_for(client.wait_loaded(), 10)
    finally:
        await client.stop()
    assert client.status.state == State.LOADED and client.status.names == EXPOSED_NAMES


@pytest.mark.parametrize(
    "odd_state",
    [{"entity_id": ["light.hall"], "attributes": {"friendly_name": "Hall"}}, {"attributes": []}, 42, None],
)
async def test_a_state_not_understood_leaves_out_only_that_state(
    home_assistant: HomeAssistantDouble, odd_state: Any
) -> None:
    """An entity id that is not text (unhashable, as a list) once failed every read of the names."""
    states = [
        {"entity_id": e["entity_id"], "state": "on", "attributes": {"friendly_name": e["name"]}}
        for e in home_assistant.home["entities"]
    ]
    home_assistant.replies["get_states"] = {"success": True, "result": [odd_state, *states]}
    client = client_for(home_assistant.url)
    await client.start()
    try:
        await asyncio.wait_for(client.wait_loaded(), 10)
    finally:
        await client.stop()
    assert client.status.names == EXPOSED_NAMES and client.status.last_error is None


async def test_a_name_longer_than_anyone_says_is_left_out(home_assistant: HomeAssistantDouble) -> None:
    """A megabyte friendly name (one word) once ranked among the first entities and went into the
    context of every decode that takes the home's names (Qwen3-ASR: 100)."""
    huge = "Lamp" * 250_000
    home_assistant.home["entities"].append({"entity_id": "light.huge", "name": huge, "aliases": []})
    home_assistant.home["areas"][0]["aliases"].append(huge[:101])
    client = await read_once(home_assistant)
    assert client.names(2000) == rank_names(HomeNames.from_json(HOME), 2000)
    assert client.status.names == EXPOSED_NAMES


async def test_a_user_who_is_not_an_administrator_is_told_so(home_assistant: HomeAssistantDouble) -> None:
    error = {"code": "unauthorized", "message": "Unauthorized"}
    home_assistant.replies["homeassistant/expose_entity/list"] = {"success": False, "error": error}
    client = client_for(home_assistant.url)
    await client.start()
    try:
        status = await asyncio.wait_for(client.wait_for(State.AUTH_FAILED), 10)
    finally:
        await client.stop()
    assert status.last_error is not None and "administrator" in status.last_error


async def test_disabled_entities_are_left_out(home_assistant: HomeAssistantDouble) -> None:
    """Assist cannot act on a disabled entity (Home Assistant keeps its exposure), so it names nothing."""
    disabled = home_assistant.home["entities"][0]
    disabled["disabled_by"] = "user"
    client = await read_once(home_assistant)
    names = client.names(2000)
    assert disabled["name"] not in names and not set(disabled["aliases"]) & set(names)
    assert client.status.names == EXPOSED_NAMES - 1 - len(disabled["aliases"])


async def test_a_connection_that_closes_after_each_read_is_retried_ever_more_slowly(
    home_assistant: HomeAssistantDouble,
) -> None:
    """Only a connection that lasted is a restart worth retrying at once; a flapping one backs off."""
    home_assistant.close_after = "config/floor_registry/list"  # the last command of a read
    client = client_for(home_assistant.url, backoff_s=(0.2, 60.0))
    await client.start()
    try:
        await home_assistant.until(lambda: home_assistant.auth_attempts >= 4)
    finally:
        await client.stop()
    assert client.loads >= 3, "every connection read the names before it closed"
    gaps = [later - earlier for earlier, later in itertools.pairwise(home_assistant.auth_times)]
    assert all(gap >= 0.2 * 2**i for i, gap in enumerate(gaps[:3])), gaps


async def test_a_rotated_token_file_is_read_again(home_assistant: HomeAssistantDouble, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("an-old-token\n")
    settings = Settings(ha_url=home_assistant.url, ha_token_file=str(token_file))
    client = HomeAssistantNames(settings.ha_url, settings.home_assistant_token, backoff_s=(0.05, 0.2))
    await client.start()
    try:
        await asyncio.wait_for(client.wait_for(State.AUTH_FAILED), 10)
        token_file.write_text(TOKEN + "\n")
        await asyncio.wait_for(client.wait_loaded(), 10)
    finally:
        await client.stop()
    assert client.status.names == EXPOSED_NAMES


def test_fixture_home_ranks_all_exposed_names() -> None:
    assert len(rank_names(HomeNames.from_json(HOME), 2000)) == EXPOSED_NAMES


@pytest.mark.parametrize(
    ("path", "said"),
    [
        (
            "/lovelace/0",
            "no Home Assistant WebSocket API at {url} (HTTP 404): ha_url is Home Assistant's own address, e.g. "
            "http://homeassistant.local:8123, without a page's path",
        ),
        ("/behind-a-proxy", "{url} failed (HTTP 502): Home Assistant, or a proxy before it, is down"),
    ],
)
async def test_a_url_where_a_web_server_but_no_home_assistant_answers_says_what_ha_url_should_be(
    path: str, said: str
) -> None:
    """A page's address pasted from the browser (…:8123/lovelace/0), or another server's port: the
    error was aiohttp's "404, message='Invalid response status', url=…". A proxy's 502 is not a
    page's path, and is said as what it is (aiohttp follows a redirect itself)."""

    async def bad_gateway(request: web.Request) -> web.Response:
        raise web.HTTPBadGateway()

    app = web.Application()
    app.router.add_get("/behind-a-proxy/api/websocket", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    client = client_for(f"http://127.0.0.1:{port}{path}")
    try:
        await client.start()
        await asyncio.wait_for(client.wait_for(State.UNREACHABLE), 10)
    finally:
        await client.stop()
        await runner.cleanup()
    assert client.status.last_error == said.format(url=f"ws://127.0.0.1:{port}{path}/api/websocket")
