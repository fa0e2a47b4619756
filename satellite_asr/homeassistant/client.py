"""A small Home Assistant WebSocket API client that keeps the household's names current.

Why not a library: the maintained one on PyPI (`hass-client`) gives the handshake and commands,
which are a few lines on aiohttp (already a dependency); what this needs beyond them, reconnecting
with backoff while keeping the last good names, a token-free status and a debounced refresh, it
would not give. Message shapes follow Home Assistant core's websocket_api, config and
homeassistant components.

What is read: the entities exposed to Assist (`homeassistant/expose_entity/list`), their friendly
names (`get_states`) and registry aliases (`config/entity_registry/get_entries`), areas
(`config/area_registry/list`) and floors (`config/floor_registry/list`), names and aliases. It
re-reads them (debounced) on `entity_registry_updated` (renames, aliases, exposure changes),
`area_registry_updated` and `floor_registry_updated`. A friendly name set in YAML, with no registry
entry, is seen on the next reconnection: following every `state_changed` would cost more than it
is worth.

The token is sent in the auth message and nowhere else: never logged, never in the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from satellite_asr.homeassistant.names import EntityNames, HomeNames, Place, rank_names

log = logging.getLogger(__name__)

SUPERVISOR_URL = "http://supervisor/core"
"""Home Assistant's API as the Supervisor proxies it to add-ons (with the `SUPERVISOR_TOKEN`)."""
WATCHED_EVENTS = ("entity_registry_updated", "area_registry_updated", "floor_registry_updated")
ASSISTANT = "conversation"
"""The assistant whose exposed entities are read: Home Assistant's own Assist."""
REQUEST_TIMEOUT_S = 30.0


class State(enum.StrEnum):
    DISABLED = "disabled"
    CONNECTING = "connecting"
    LOADED = "loaded"
    AUTH_FAILED = "auth_failed"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Status:
    """What `/health` shows: never the token."""

    state: State
    names: int = 0
    """Distinct names read (entities, aliases, areas, floors) in the last good list."""
    loaded_at: datetime.datetime | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "names": self.names,
            "loaded_at": self.loaded_at.isoformat() if self.loaded_at else None,
            "last_error": self.last_error,
        }


class HomeAssistantError(Exception):
    """Home Assistant answered, but not as expected (a failed command, a closed connection)."""


class AuthFailed(HomeAssistantError):
    """Home Assistant refused the token."""


def websocket_url(base_url: str) -> str:
    """The WebSocket API address for a Home Assistant URL.

    `http://homeassistant.local:8123` gives `ws://homeassistant.local:8123/api/websocket`; the
    Supervisor's `http://supervisor/core` gives `ws://supervisor/core/websocket`; a URL that already
    ends in `/websocket` is kept (with its scheme made ws/wss).
    """
    parts = urlsplit(base_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a Home Assistant URL (http://host:8123 or https://...): {base_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket" if path.endswith("/core") else "/api/websocket"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class HomeAssistantNames:
    """Connects to Home Assistant, reads the household's names and keeps them current.

    `start()` returns at once; the connection lives in a background task until `stop()`. Read
    `home` (the last good `HomeNames`, empty until the first load), `names(limit)` (ranked) and
    `status` at any time. Losing Home Assistant keeps the last good names and retries with
    exponential backoff; a refused token is logged once and retried slowly. (A daemon with no Home
    Assistant configured reports `Status(State.DISABLED)` and makes no client.)
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        refresh_delay_s: float = 2.0,
        backoff_s: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        self._url = websocket_url(url)
        self._token = token
        self._refresh_delay_s = refresh_delay_s
        self._backoff_min_s, self._backoff_max_s = backoff_s
        self._home = HomeNames()
        self._status = Status(State.CONNECTING)
        self._status_changed = asyncio.Event()
        self._loads = 0
        self._loaded = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}

    @property
    def home(self) -> HomeNames:
        return self._home

    @property
    def status(self) -> Status:
        return self._status

    @property
    def loads(self) -> int:
        """How many times the names were read successfully: each registry change adds one."""
        return self._loads

    def names(self, limit: int) -> list[str]:
        return rank_names(self._home, limit)

    async def wait_loaded(self, after: int = 0) -> int:
        """Wait until more than `after` loads have happened; returns the count."""
        async with self._loaded:
            await self._loaded.wait_for(lambda: self._loads > after)
            return self._loads

    async def wait_for(self, state: State) -> Status:
        """Wait until the status is in `state` (for callers that must know, and for tests)."""
        while self._status.state != state:
            changed = self._status_changed
            await changed.wait()
        return self._status

    def _publish(self, status: Status) -> None:
        self._status = status
        self._status_changed.set()
        self._status_changed = asyncio.Event()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="home-assistant-names")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set_status(self, state: State, error: str | None = None) -> None:
        """Change the state; a new error is logged once, not at every retry."""
        if error and error != self._status.last_error:
            if state == State.AUTH_FAILED:
                log.error("Home Assistant at %s refused the access token: %s", self._url, error)
            elif error:
                log.warning("Home Assistant at %s: %s (keeping %d names)", self._url, error, self._status.names)
        self._publish(Status(state, self._status.names, self._status.loaded_at, error))

    def _safe(self, text: str) -> str:
        """An error text with the token removed, should anything ever echo it."""
        return text.replace(self._token, "<token>") if self._token else text

    async def _run(self) -> None:
        delay = self._backoff_min_s
        async with aiohttp.ClientSession() as http:
            while True:
                self._set_status(State.CONNECTING, self._status.last_error)
                loads_before = self._loads
                try:
                    await self._connection(http)
                    self._set_status(State.UNREACHABLE, "Home Assistant closed the connection")
                except AuthFailed as exc:
                    self._set_status(State.AUTH_FAILED, self._safe(str(exc)))
                    delay = self._backoff_max_s  # the same token will not work sooner
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, HomeAssistantError) as exc:
                    self._set_status(State.UNREACHABLE, self._safe(str(exc) or type(exc).__name__))
                if self._loads > loads_before:  # it worked until now: a restart, try again soon
                    delay = self._backoff_min_s
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)

    async def _connection(self, http: aiohttp.ClientSession) -> None:
        """One connection: authenticate, subscribe, read the names, then follow events until it closes."""
        timeout = aiohttp.ClientWSTimeout(ws_close=10)
        async with http.ws_connect(self._url, heartbeat=30, max_msg_size=0, timeout=timeout) as ws:
            await self._authenticate(ws)
            refresh: asyncio.Task[None] | None = None

            def on_registry_event() -> None:
                nonlocal refresh
                if refresh is None or refresh.done():
                    refresh = asyncio.create_task(self._refresh(ws, self._refresh_delay_s))

            reader = asyncio.create_task(self._read(ws, on_registry_event))
            try:
                for event_type in WATCHED_EVENTS:
                    await self._command(ws, {"type": "subscribe_events", "event_type": event_type})
                await self._refresh(ws, 0)
                await reader
            finally:
                for task in (reader, refresh):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                for future in self._pending.values():
                    future.cancel()
                self._pending.clear()

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        hello = await self._receive(ws)
        if hello.get("type") != "auth_required":
            raise HomeAssistantError(f"expected auth_required, got {hello.get('type')!r}")
        await ws.send_json({"type": "auth", "access_token": self._token})
        answer = await self._receive(ws)
        if answer.get("type") == "auth_invalid":
            raise AuthFailed(str(answer.get("message") or "invalid access token"))
        if answer.get("type") != "auth_ok":
            raise HomeAssistantError(f"expected auth_ok, got {answer.get('type')!r}")

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        message = await ws.receive(timeout=REQUEST_TIMEOUT_S)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise HomeAssistantError("Home Assistant closed the connection")
        data = message.json()
        if not isinstance(data, dict):
            raise HomeAssistantError("Home Assistant sent a message that is not a JSON object")
        return data

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, on_registry_event: Callable[[], None]) -> None:
        """Dispatch results to their commands and registry events to a refresh, until closed."""
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            items = data if isinstance(data, list) else [data]  # Home Assistant may coalesce messages
            for item in items:
                if not isinstance(item, dict):
                    raise HomeAssistantError("Home Assistant sent a message that is not a JSON object")
                if item.get("type") == "result" and (future := self._pending.pop(int(item.get("id") or 0), None)):
                    if not future.done():
                        future.set_result(item)
                elif item.get("type") == "event":
                    on_registry_event()

    async def _command(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> Any:
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await ws.send_json({"id": self._next_id, **message})
        answer = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        if not answer.get("success"):
            error = answer.get("error") or {}
            raise HomeAssistantError(
                f"{message['type']} failed: {error.get('code', 'unknown_error')}: {error.get('message', '')}".rstrip(
                    ": "
                )
            )
        return answer.get("result")

    async def _refresh(self, ws: aiohttp.ClientWebSocketResponse, delay_s: float) -> None:
        """Read every name again (after `delay_s`, so that a burst of registry events costs one read)."""
        await asyncio.sleep(delay_s)
        try:
            home = await self._read_home(ws)
        except HomeAssistantError as exc:
            self._set_status(self._status.state, self._safe(str(exc)))
            if delay_s == 0:
                raise
            return
        self._home = home
        count = len(rank_names(home, sys.maxsize))
        self._publish(Status(State.LOADED, count, datetime.datetime.now(datetime.UTC), None))
        log.info("read %d names from Home Assistant", count)
        async with self._loaded:
            self._loads += 1
            self._loaded.notify_all()

    async def _read_home(self, ws: aiohttp.ClientWebSocketResponse) -> HomeNames:
        exposure = await self._command(ws, {"type": "homeassistant/expose_entity/list"})
        exposed = [
            entity_id
            for entity_id, assistants in (exposure or {}).get("exposed_entities", {}).items()
            if isinstance(assistants, dict) and assistants.get(ASSISTANT) is True
        ]
        states = await self._command(ws, {"type": "get_states"})
        friendly = {
            state["entity_id"]: state.get("attributes", {}).get("friendly_name")
            for state in states or []
            if isinstance(state, dict) and "entity_id" in state
        }
        registry: dict[str, Any] = {}
        if exposed:
            registry = await self._command(ws, {"type": "config/entity_registry/get_entries", "entity_ids": exposed})
        entities = []
        for entity_id in exposed:
            entry = (registry or {}).get(entity_id) or {}
            name = friendly.get(entity_id) or entry.get("name") or entry.get("original_name")
            if isinstance(name, str) and name.strip():
                entities.append(EntityNames(entity_id, name, _strings(entry.get("aliases"))))
        areas = await self._command(ws, {"type": "config/area_registry/list"})
        try:
            floors = await self._command(ws, {"type": "config/floor_registry/list"})
        except HomeAssistantError as exc:  # Home Assistant before 2024.4 has no floors
            if "unknown_command" not in str(exc):
                raise
            floors = []
        return HomeNames(tuple(entities), _places(areas), _places(floors))


def _strings(values: Any) -> tuple[str, ...]:
    """The text items of a registry list (newer Home Assistant puts null for "the entity's name")."""
    return tuple(value for value in values or () if isinstance(value, str) and value.strip())


def _places(entries: Any) -> tuple[Place, ...]:
    return tuple(
        Place(entry["name"], _strings(entry.get("aliases")))
        for entry in entries or ()
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    )
