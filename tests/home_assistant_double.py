"""HomeAssistantDouble: a stand-in Home Assistant WebSocket API on 127.0.0.1 (a test double).

It speaks the parts of Home Assistant's protocol the names client uses, with the message shapes
of Home Assistant core: the auth handshake, `get_config` (with its core state), `get_states`,
`homeassistant/expose_entity/list`, `config/entity_registry/get_entries`, the area and floor
registry lists and `subscribe_events`. Tests change its home, push registry events, refuse tokens,
stop and start it again on the same port (a Home Assistant restart), and let it start slowly: while
`state` is not "RUNNING" it has the states of only some entities, as a starting Home Assistant has.
tests/test_home_assistant_real.py checks the same client against a real Home Assistant core.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import WSMsgType, web

from tests.helpers import FIXTURES, free_port

HOME: dict[str, Any] = json.loads((FIXTURES / "names" / "home.json").read_text())
"""The evaluation home (tests/fixtures/names/home.json) in Home Assistant's terms."""
EXPOSED_NAMES = 1492
"""The names of `HOME` that Home Assistant exposes to Assist, and so the daemon reads (8 of its 1500
are not); more each time make_names.py adds a part."""


class HomeAssistantDouble:
    def __init__(self, home: dict[str, Any], token: str) -> None:
        self.home = home
        """The home in `tests/fixtures/names/home.json`'s shape; tests may change it."""
        self.token = token
        self.port = free_port()
        self.commands: list[str] = []
        """Command types received, in order (over every connection)."""
        self.auth_attempts = 0
        self.auth_times: list[float] = []
        """When each auth attempt came (the loop's clock)."""
        self.state = "RUNNING"
        """The core state `get_config` reports; while not "RUNNING", `get_states` lists no entity. (A
        real Home Assistant says "NOT_RUNNING" while its integrations set up, then briefly "STARTING".)"""
        self.replies: dict[str, dict[str, Any] | str | None] = {}
        """A misbehaving Home Assistant: a command's result message in place of the real one (without
        its id), a text frame sent as it is, or None to close the connection when it comes."""
        self.close_after: str | None = None
        """A command after whose (real) answer the connection is closed."""
        self.states_gate = asyncio.Event()
        """`get_states` is answered only while this is set (a slow read, for an event to come during it)."""
        self.states_gate.set()
        self._activity = asyncio.Event()
        self._subscriptions: list[tuple[web.WebSocketResponse, int, str]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/websocket", self.websocket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Go away as a restarting Home Assistant does: every connection closed, the port refused."""
        for ws, *_ in self._subscriptions:
            await ws.close()
        self._subscriptions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, checked at each auth attempt and command received."""
        while not condition():
            self._activity.clear()
            await self._activity.wait()

    async def push_event(self, event_type: str, data: dict[str, Any]) -> int:
        """Send a registry event to every subscriber; returns how many got it."""
        sent = 0
        for ws, subscription, wanted in list(self._subscriptions):
            if wanted == event_type and not ws.closed:
                event = {"event_type": event_type, "data": data, "origin": "LOCAL", "time_fired": "2026-12-01T00:00:00"}
                await ws.send_json({"id": subscription, "type": "event", "event": event})
                sent += 1
        return sent

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """The WebSocket API handler (also mountable elsewhere: the Supervisor proxies it at `/core/websocket`)."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "auth_required", "ha_version": "2026.11.0"})
        auth = await ws.receive_json()
        self.auth_attempts += 1
        self.auth_times.append(asyncio.get_running_loop().time())
        self._activity.set()
        if auth.get("type") != "auth" or auth.get("access_token") != self.token:
            await ws.send_json({"type": "auth_invalid", "message": "Invalid access token or password"})
            await ws.close()
            return ws
        await ws.send_json({"type": "auth_ok", "ha_version": "2026.11.0"})
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                break
            command = json.loads(message.data)
            self.commands.append(command["type"])
            self._activity.set()
            if command["type"] in self.replies:
                reply = self.replies[command["type"]]
                if reply is None:
                    await ws.close()
                    break
                if isinstance(reply, str):
                    await ws.send_str(reply)
                else:
                    await ws.send_json({"id": command["id"], "type": "result", **reply})
            elif command["type"] == "subscribe_events":
                self._subscriptions.append((ws, command["id"], command["event_type"]))
                await ws.send_json({"id": command["id"], "type": "result", "success": True, "result": None})
            else:
                if command["type"] == "get_states":
                    await self.states_gate.wait()
                await ws.send_json(self._answer(command))
                if command["type"] == self.close_after:
                    await ws.close()
                    break
        return ws

    def _answer(self, command: dict[str, Any]) -> dict[str, Any]:
        entities = self.home["entities"]
        result: Any
        kind = command["type"]
        if kind == "get_config":
            result = {"location_name": "Home", "version": "2026.11.0", "state": self.state}
        elif kind == "get_states":
            result = [
                {"entity_id": e["entity_id"], "state": "on", "attributes": {"friendly_name": e["name"]}}
                for e in entities
                if self.state == "RUNNING"
            ]
        elif kind == "homeassistant/expose_entity/list":
            # as Home Assistant: only the entities exposed to some assistant, and only those assistants
            result = {
                "exposed_entities": {e["entity_id"]: {"conversation": True} for e in entities if e.get("exposed", True)}
            }
        elif kind == "config/entity_registry/get_entries":
            by_id = {e["entity_id"]: e for e in entities}
            result = {
                entity_id: {
                    "entity_id": entity_id,
                    "name": None,
                    "aliases": [*by_id[entity_id]["aliases"], None],
                    "disabled_by": by_id[entity_id].get("disabled_by"),
                }
                if entity_id in by_id
                else None
                for entity_id in command["entity_ids"]
            }
        elif kind == "config/area_registry/list":
            result = [{"area_id": a["id"], "name": a["name"], "aliases": a["aliases"]} for a in self.home["areas"]]
        elif kind == "config/floor_registry/list":
            result = [{"floor_id": f["id"], "name": f["name"], "aliases": f["aliases"]} for f in self.home["floors"]]
        else:
            error = {"code": "unknown_command", "message": "Unknown command."}
            return {"id": command["id"], "type": "result", "success": False, "error": error}
        return {"id": command["id"], "type": "result", "success": True, "result": result}


@asynccontextmanager
async def running_home_assistant(token: str) -> AsyncIterator[HomeAssistantDouble]:
    """A started stand-in serving its own copy of `HOME` (tests change it), stopped on exit."""
    double = HomeAssistantDouble(copy.deepcopy(HOME), token)
    await double.start()
    try:
        yield double
    finally:
        await double.stop()
