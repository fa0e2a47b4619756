"""Who may use the daemon over HTTP: the API key, the Origin of a page, the Host it is reached by.

Real daemon on loopback, real clients (aiohttp, websockets); see satellite_asr/access.py.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from websockets.exceptions import InvalidStatus

from satellite_asr.access import Access, load_api_key
from satellite_asr.config import ConfigError
from satellite_asr.server import Daemon, Handler
from tests.helpers import daemon_settings, running_daemon, ws_url

pytestmark = pytest.mark.timeout(120)

KEY = "s3cret-Key_0123456789abcdef"


def base_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}"


async def get(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base_url(daemon) + path, headers=headers) as response:
        body = await response.read()
        is_json = response.content_type == "application/json"
        return response.status, json.loads(body) if is_json else body


async def session_created(url: str, **connect: Any) -> dict[str, Any]:
    """Opens a stream with `connect` options, sends `config`, returns `session_created`."""
    async with websockets.connect(url, **connect) as ws:
        await ws.send(json.dumps({"type": "config"}))
        message: dict[str, Any] = json.loads(await ws.recv())
        message["subprotocol"] = ws.subprotocol
        return message


async def refused_upgrade(url: str, **connect: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a WebSocket upgrade the daemon refuses."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, **connect):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


# --- API key ---------------------------------------------------------------------------------------


async def test_with_a_key_only_the_page_and_health_are_open() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        health = await get(daemon, "/health")
        page = await get(daemon, "/")
        script = await get(daemon, "/static/app.js")
        metrics = await get(daemon, "/metrics")
        unknown = await get(daemon, "/no/such/route")
        wrong = await get(daemon, "/metrics", {"Authorization": "Bearer not-the-key"})
        bearer = await get(daemon, "/metrics", {"Authorization": f"Bearer {KEY}"})
        header = await get(daemon, "/metrics", {"X-API-Key": KEY})
        query = await get(daemon, f"/metrics?api_key={KEY}")
    assert health[0] == 200 and health[1]["auth_required"] is True
    assert page[0] == 200 and script[0] == 200
    assert metrics == (401, metrics[1]) and metrics[1]["code"] == "missing_api_key"
    assert metrics[1]["type"] == "error" and "Authorization: Bearer" in metrics[1]["message"]
    assert unknown[0] == 401, "a path no route serves is not public either"
    assert wrong[0] == 401 and wrong[1]["code"] == "invalid_api_key"
    assert [bearer[0], header[0], query[0]] == [200, 200, 200]
    assert b"satellite_asr_sessions" in bearer[1]


async def test_the_key_alone_in_authorization_is_read_only_when_no_other_way_carries_one() -> None:
    """AssemblyAI's clients send `Authorization: KEY`. An Authorization header of another kind (a
    proxy's token, no scheme) did not stop a request whose key came another way, and still does
    not; alone, the key in it is taken, and a wrong one refused."""
    async with running_daemon(api_key=KEY) as daemon:
        header = await get(daemon, "/metrics", {"Authorization": "a-proxys-token", "X-API-Key": KEY})
        query = await get(daemon, f"/metrics?api_key={KEY}", {"Authorization": "a-proxys-token"})
        alone = await get(daemon, "/metrics", {"Authorization": KEY})
        wrong = await get(daemon, "/metrics", {"Authorization": "not-the-key"})
        scheme_only = await get(daemon, "/metrics", {"Authorization": "Bearer"})
    assert [header[0], query[0], alone[0]] == [200, 200, 200]
    assert wrong[0] == 401 and wrong[1]["code"] == "invalid_api_key"
    assert scheme_only[0] == 401 and scheme_only[1]["code"] == "missing_api_key"


async def test_the_page_is_revalidated_and_head_is_answered_like_get() -> None:
    """After an upgrade a browser must not run old cached scripts against the new daemon; uptime
    checks ask with HEAD."""
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        page = {}
        for path in ("/", "/static/app.js", "/static/audio-worklet.js"):
            async with http.get(base_url(daemon) + path) as response:
                page[path] = response.status, response.headers.get("Cache-Control")
        head = {}
        for path in ("/", "/health", "/metrics", "/static/app.js", "/v1/models"):
            async with http.head(base_url(daemon) + path) as response:
                head[path] = response.status
    assert set(page.values()) == {(200, "no-cache")}
    assert set(head.values()) == {200}, head


async def test_without_a_key_setting_nothing_asks_for_one() -> None:
    async with running_daemon() as daemon:
        health = await get(daemon, "/health")
        metrics = await get(daemon, "/metrics")
        created = await session_created(ws_url(daemon))
    assert health[1]["auth_required"] is False
    assert metrics[0] == 200
    assert created["type"] == "session_created"


async def test_websocket_upgrade_without_the_key_is_refused_with_401_before_it_happens() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        missing = await refused_upgrade(ws_url(daemon))
        wrong = await refused_upgrade(ws_url(daemon), additional_headers={"X-API-Key": KEY + "x"})
        only_key_entry = await refused_upgrade(ws_url(daemon), subprotocols=[f"satellite-asr.key.{KEY}"])
        assert len(daemon.core.sessions) == 0
    assert missing == (401, missing[1]) and missing[1]["code"] == "missing_api_key"
    assert wrong == (401, wrong[1]) and wrong[1]["code"] == "invalid_api_key"
    assert only_key_entry[0] == 400 and only_key_entry[1]["code"] == "invalid_subprotocol", (
        "a key sent as a subprotocol needs `satellite-asr` beside it, or a browser would fail the connection"
    )


async def test_websocket_takes_the_key_four_ways() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        url = ws_url(daemon)
        by_bearer = await session_created(url, additional_headers={"Authorization": f"Bearer {KEY}"})
        by_header = await session_created(url, additional_headers={"X-API-Key": KEY})
        by_subprotocol = await session_created(url, subprotocols=["satellite-asr", f"satellite-asr.key.{KEY}"])
        by_query = await session_created(f"{url}?api_key={KEY}")
    for created in (by_bearer, by_header, by_subprotocol, by_query):
        assert created["type"] == "session_created"
    assert by_subprotocol["subprotocol"] == "satellite-asr", "the accepted subprotocol is echoed, not the key"


async def test_the_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_daemon(api_key=KEY) as daemon:
        await refused_upgrade(ws_url(daemon), additional_headers={"X-API-Key": "wrong-" + KEY})
        await session_created(ws_url(daemon), subprotocols=["satellite-asr", f"satellite-asr.key.{KEY}"])
        await get(daemon, f"/metrics?api_key={KEY}")
    server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets"))
    assert KEY not in server_log, "(the websockets client logs its own headers at DEBUG; the daemon must not)"
    assert "session" in server_log, "the daemon's log was captured, so the check above looked at something"


class DaemonWithMoreRoutes(Daemon):
    """The daemon with a route another change could add: it must be guarded without touching `access`."""

    async def _extra(self, request: web.Request) -> web.Response:
        return web.json_response({"extra": True})

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("GET", "/v1/extra", self._extra)]


async def test_routes_added_later_are_guarded_and_openai_paths_answer_in_openai_shape() -> None:
    daemon = DaemonWithMoreRoutes(daemon_settings(api_key=KEY))
    await daemon.start()
    try:
        await daemon.core.wait_ready()
        models = await get(daemon, "/v1/models")
        allowed = await get(daemon, "/v1/models", {"Authorization": f"Bearer {KEY}"})
        extra = await get(daemon, "/v1/extra")
        extra_allowed = await get(daemon, "/v1/extra", {"X-API-Key": KEY})
        async with aiohttp.ClientSession() as http:
            post = await http.post(base_url(daemon) + "/v1/audio/transcriptions", data=b"x")
            posted = post.status, await post.json()
            authenticate = post.headers.get("WWW-Authenticate")
    finally:
        await daemon.stop()
    assert models[0] == 401
    assert models[1]["error"]["code"] == "missing_api_key" and models[1]["error"]["type"] == "authentication_error"
    assert allowed[0] == 200 and [m["id"] for m in allowed[1]["data"]] == [daemon.core.engine_info.model]
    assert extra[0] == 401 and extra[1]["code"] == "missing_api_key", "the project's own error shape elsewhere"
    assert extra_allowed == (200, {"extra": True})
    assert posted[0] == 401 and posted[1]["error"]["code"] == "missing_api_key"
    assert authenticate == 'Bearer realm="satellite-asr"'


def test_api_key_file_holds_the_key_and_bad_keys_stop_start_up(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(f"{KEY}\n# the rest of the file is ignored\n")
    assert load_api_key(daemon_settings(api_key_file=str(secret))) == KEY
    assert load_api_key(daemon_settings()) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_api_key(daemon_settings(api_key_file=str(empty)))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_api_key(daemon_settings(api_key_file=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="may only hold letters"):
        load_api_key(daemon_settings(api_key="has space"))
    with pytest.raises(ConfigError, match="api_key and api_key_file: give one or neither"):
        daemon_settings(api_key=KEY, api_key_file=str(secret))


async def test_daemon_with_an_api_key_file_requires_that_key(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY)
    async with running_daemon(api_key_file=str(secret)) as daemon:
        refused = await get(daemon, "/metrics")
        allowed = await get(daemon, "/metrics", {"X-API-Key": KEY})
    assert (refused[0], allowed[0]) == (401, 200)


# --- Origin ------------------------------------------------------------------------------------------


async def test_realtime_takes_the_key_as_a_subprotocol_like_the_stream() -> None:
    """What a browser can send: the key beside `satellite-asr`, which is echoed; the key alone is refused."""
    async with running_daemon(api_key=KEY) as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/v1/realtime"
        async with websockets.connect(url, subprotocols=["satellite-asr", f"satellite-asr.key.{KEY}"]) as ws:
            created = json.loads(await ws.recv())
            subprotocol = ws.subprotocol
        only_key_entry = await refused_upgrade(url, subprotocols=[f"satellite-asr.key.{KEY}"])
    assert created["type"] == "session.created" and subprotocol == "satellite-asr"
    assert only_key_entry[0] == 400 and only_key_entry[1]["error"]["code"] == "invalid_subprotocol"
    assert only_key_entry[1]["error"]["type"] == "invalid_request_error"


async def test_a_page_from_another_origin_cannot_open_a_stream() -> None:
    async with running_daemon() as daemon:
        status, body = await refused_upgrade(ws_url(daemon), origin="https://evil.example")
        assert len(daemon.core.sessions) == 0
    assert status == 403 and body["code"] == "origin_not_allowed" and "allowed_origins" in body["message"]


async def test_the_daemons_own_page_clients_without_origin_and_allowed_origins_may() -> None:
    async with running_daemon(allowed_origins=("https://ha.example",)) as daemon:
        url = ws_url(daemon)
        own = await session_created(url, origin=f"http://127.0.0.1:{daemon.http_port}")
        none = await session_created(url)
        listed = await session_created(url, origin="https://ha.example")
        other_port = await refused_upgrade(url, origin="http://127.0.0.1:1")
    assert [own["type"], none["type"], listed["type"]] == ["session_created"] * 3
    assert other_port[0] == 403, "same host, other port: another origin"


async def test_the_own_page_is_the_requests_scheme_and_port_the_default_when_host_has_none() -> None:
    """A Host without a port is the scheme's default port (80 over http): a page on another port, or on
    https when the request came over http, is another origin (X-Forwarded-Proto is not believed)."""
    async with running_daemon() as daemon:
        port = daemon.http_port

        async def status(host: str, origin: str, **extra: str) -> int:
            return (await get(daemon, "/metrics", {"Host": host, "Origin": origin, **extra}))[0]

        default_port = [await status("127.0.0.1", o) for o in ("http://127.0.0.1", "http://127.0.0.1:80")]
        other_port = await status("127.0.0.1", "http://127.0.0.1:8080")
        https_page = await status("127.0.0.1", "https://127.0.0.1")
        https_same_port = await status(f"127.0.0.1:{port}", f"https://127.0.0.1:{port}")
        forwarded = await status("127.0.0.1", "https://127.0.0.1", **{"X-Forwarded-Proto": "https"})
    assert default_port == [200, 200]
    assert other_port == https_page == https_same_port == forwarded == 403


async def test_allowed_origins_star_allows_every_page() -> None:
    async with running_daemon(allowed_origins=("*",)) as daemon:
        created = await session_created(ws_url(daemon), origin="https://anywhere.example")
    assert created["type"] == "session_created"


# --- Host (DNS rebinding) -----------------------------------------------------------------------------


async def rebinding_upgrade(daemon: Daemon, name: str) -> int:
    """A page on `name`, which its attacker pointed at the daemon's address: Host and Origin agree."""
    port = daemon.http_port
    headers = {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(f"ws://127.0.0.1:{port}/v1/stream", headers=headers) as ws:
                await ws.send_json({"type": "config"})
                message = await ws.receive_json()
                assert message["type"] == "session_created"
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_a_rebinding_name_is_refused_and_allowed_hosts_admits_a_name() -> None:
    async with running_daemon(allowed_hosts=("asr.lan",)) as daemon:
        rebinding = await rebinding_upgrade(daemon, "evil.example")
        listed = await rebinding_upgrade(daemon, "asr.lan")
        localhost = await rebinding_upgrade(daemon, "localhost")
        metrics = await get(daemon, "/metrics", {"Host": f"evil.example:{daemon.http_port}"})
        by_address = await get(daemon, "/metrics", {"Host": f"[::1]:{daemon.http_port}"})
    assert rebinding == 403
    assert listed == 101 and localhost == 101
    assert metrics[0] == 403 and metrics[1]["code"] == "host_not_allowed"
    assert by_address[0] == 200, "an IP address cannot be rebound"


def test_allowed_hosts_and_origins_that_could_never_match_stop_start_up() -> None:
    """A port in a host entry or an origin without its scheme was kept and silently never matched."""
    refusals = {
        "asr.lan:8787": "list the name alone, without scheme or port (e.g. 'asr.lan')",
        "https://asr.lan": "(e.g. 'asr.lan')",
        "asr lan": "is not a host name",
    }
    for entry, message in refusals.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            Access(daemon_settings(allowed_hosts=(entry,)))
    for entry in ("ha.example.org", "https://ha.example.org/lovelace", "https://ha.example.org:http"):
        with pytest.raises(ConfigError, match=re.escape(f"allowed_origins: {entry!r}")):
            Access(daemon_settings(allowed_origins=(entry,)))
    with pytest.raises(ConfigError, match="holds a user or password") as refused:
        Access(daemon_settings(allowed_origins=("https://me:pa55word@ha.example.org",)))
    assert "pa55word" not in str(refused.value)
    hosts = ("ASR.lan.", "[::1]", "bücher.lan")
    origins = ("HTTPS://HA.example.org:443/", "https://bücher.example", "capacitor://localhost", "null")
    listed = Access(daemon_settings(allowed_hosts=hosts, allowed_origins=origins))
    assert listed.host_allowed("asr.lan:8787") and listed.host_allowed("xn--bcher-kva.lan")
    sent = ("https://ha.example.org", "https://xn--bcher-kva.example", "capacitor://localhost", "null")
    assert all(listed.origin_allowed(origin, None, "http") for origin in sent)


async def test_a_refused_host_is_named_without_its_port() -> None:
    """The refusal invites listing the name in allowed_hosts: it quotes what to list."""
    async with running_daemon() as daemon:
        status, body = await get(daemon, "/metrics", {"Host": f"asr.lan:{daemon.http_port}"})
    assert status == 403 and "not served as 'asr.lan';" in body["message"]


async def test_with_a_key_any_host_name_may_be_used() -> None:
    """A rebinding page cannot present the key, so with one the name the daemon is reached by is free."""
    async with running_daemon(api_key=KEY) as daemon:
        headers = {"Host": f"asr.example.org:{daemon.http_port}", "X-API-Key": KEY}
        proxied = await get(daemon, "/metrics", headers)
        without_key = await get(daemon, "/metrics", {"Host": f"evil.example:{daemon.http_port}"})
    assert proxied[0] == 200
    assert without_key[0] == 401
