"""A small Home Assistant WebSocket API client that keeps the household's names current.

Why not a library: the maintained one on PyPI (`hass-client`) gives the handshake and commands,
which are a few lines on aiohttp (already a dependency); what this needs beyond them, reconnecting
with backoff while keeping the last good names, a token-free status and a debounced refresh, it
would not give. Message shapes follow Home Assistant core's websocket_api, config and
homeassistant components.

What is read: the entities exposed to Assist (`homeassistant/expose_entity/list`), their friendly
names (`get_states`) and registry aliases (`config/entity_registry/get_entries`), areas
(`config/area_registry/list`) and floors (`config/floor_registry/list`), names and aliases; not
disabled entities, which Assist cannot act on. It reads them once Home Assistant has started
(`get_config`'s state, or `homeassistant_started`): a Home Assistant still starting has the
states of only some entities, and the last good list is kept until then. It re-reads them
(debounced) on `entity_registry_updated` (renames, aliases, exposure changes),
`area_registry_updated` and `floor_registry_updated`, and again if one arrives during a read. What
no event announces is seen at the next read, about `REREAD_S` after the last at the latest: a friendly
name set in YAML (following every `state_changed` would cost more than it is worth), and the
exposure of an entity without a `unique_id`, which Home Assistant keeps outside the registry.

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

STARTED_EVENT = "homeassistant_started"
WATCHED_EVENTS = ("entity_registry_updated", "area_registry_updated", "floor_registry_updated", STARTED_EVENT)
RUNNING = "RUNNING"
"""Home Assistant's core state once every integration has set up (`get_config`'s `state`)."""
ASSISTANT = "conversation"
"""The assistant whose exposed entities are read: Home Assistant's own Assist."""
REQUEST_TIMEOUT_S = 30.0
"""The longest wait for the connection, the handshake or one command's answer."""
STEADY_CONNECTION_S = 60.0
"""A connection that read the names and lasted this long was a working one, so its loss (a restart)
is retried at once; one that closes sooner is retried with growing delays, as any failure."""
REREAD_S = 600.0
"""How long the names go unread while connected with no event: what no event announces waits this
long, plus `refresh_delay_s` and the read (a read is a few commands; `get_states` of a large home
is a few MB)."""
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""The largest message read (`get_states` of a large home is a few MB): a bound on memory."""


class State(enum.StrEnum):
    DISABLED = "disabled"
    CONNECTING = "connecting"
    STARTING = "starting"
    """Connected to a Home Assistant that is still starting: its names are read once it has."""
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
    """Home Assistant refused the token, or its user may not read what is needed."""


def websocket_url(base_url: str) -> str:
    """The WebSocket API address for a Home Assistant URL.

    `http://homeassistant.local:8123` gives `ws://homeassistant.local:8123/api/websocket`; the
    Supervisor's `http://supervisor/core` gives `ws://supervisor/core/websocket`; a URL that already
    ends in `/websocket` is kept (with its scheme made ws/wss).
    """
    parts = urlsplit(base_url.strip())
    if "@" in parts.netloc:  # refused, so that no log, error or repr ever holds a password
        raise ValueError("a Home Assistant URL without a user or password: Home Assistant takes the access token")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a Home Assistant URL (http://host:8123 or https://...): {base_url!r}")
    try:
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(f"not a Home Assistant URL, its port is not a number from 0 to 65535: {base_url!r}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/api"):
        path += "/websocket"
    elif not path.endswith("/websocket"):
        path += "/websocket" if path.endswith("/core") else "/api/websocket"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class HomeAssistantNames:
    """Connects to Home Assistant, reads the household's names and keeps them current.

    `start()` returns at once; the connection lives in a background task until `stop()`. Read
    `home` (the last good `HomeNames`, empty until the first load), `names(limit)` (ranked) and
    `status` at any time. Losing Home Assistant keeps the last good names and retries with
    exponential backoff; a refused token is logged once and retried slowly. `token` is asked at
    every connection, so a rotated token file is seen. (A daemon with no Home Assistant configured
    reports `Status(State.DISABLED)` and makes no client.)
    """

    def __init__(
        self,
        url: str,
        token: Callable[[], str],
        *,
        refresh_delay_s: float = 2.0,
        backoff_s: tuple[float, float] = (1.0, 300.0),
        reread_s: float = REREAD_S,
    ) -> None:
        self._url = websocket_url(url)
        self._read_token = token
        self._token = ""
        self._refresh_delay_s = refresh_delay_s
        self._backoff_min_s, self._backoff_max_s = backoff_s
        self._reread_s = reread_s
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
            else:
                log.warning("Home Assistant at %s: %s (keeping %d names)", self._url, error, self._status.names)
        self._publish(Status(state, self._status.names, self._status.loaded_at, error))

    def _safe(self, text: str) -> str:
        """An error text with the token removed, should anything ever echo it."""
        return text.replace(self._token, "<token>") if self._token else text

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff_min_s
        async with aiohttp.ClientSession() as http:
            while True:
                self._set_status(State.CONNECTING, self._status.last_error)
                loads_before, began = self._loads, loop.time()
                try:
                    self._token = self._read_token()
                    await self._connection(http)
                    self._set_status(State.UNREACHABLE, "Home Assistant closed the connection")
                except AuthFailed as exc:
                    self._set_status(State.AUTH_FAILED, self._safe(str(exc)))
                    delay = self._backoff_max_s  # the same token will not work sooner
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, HomeAssistantError) as exc:
                    self._set_status(State.UNREACHABLE, self._safe(str(exc) or type(exc).__name__))
                except Exception as exc:  # an answer of a shape not foreseen: reported and retried, never the end
                    log.debug("unexpected answer from Home Assistant", exc_info=True)
                    error = f"unexpected answer from Home Assistant: {type(exc).__name__}: {exc}"
                    self._set_status(State.UNREACHABLE, self._safe(error))
                if self._loads > loads_before and loop.time() - began >= STEADY_CONNECTION_S:
                    delay = self._backoff_min_s  # it worked until now: a restart, try again soon
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)

    async def _connection(self, http: aiohttp.ClientSession) -> None:
        """One connection: authenticate, subscribe, read the names once Home Assistant has started,
        then follow its events until the connection closes."""
        timeout = aiohttp.ClientWSTimeout(ws_close=10)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel (stop()) that
        # comes with the awaited result, and the client would run on
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            try:
                ws = await http.ws_connect(self._url, heartbeat=30, max_msg_size=MAX_MESSAGE_BYTES, timeout=timeout)
            except aiohttp.WSServerHandshakeError as exc:  # a server, but not Home Assistant's API there
                if exc.status in (401, 403):
                    raise HomeAssistantError(f"{self._url} refused the connection (HTTP {exc.status})") from None
                if exc.status >= 500:
                    raise HomeAssistantError(
                        f"{self._url} failed (HTTP {exc.status}): Home Assistant, or a proxy before it, is down"
                    ) from None
                raise HomeAssistantError(
                    f"no Home Assistant WebSocket API at {self._url} (HTTP {exc.status}): ha_url is Home "
                    "Assistant's own address, e.g. http://homeassistant.local:8123, without a page's path"
                ) from None
        async with ws:
            await self._authenticate(ws)
            started, changed = asyncio.Event(), asyncio.Event()

            def on_event(event_type: object) -> None:
                if event_type == STARTED_EVENT:
                    started.set()
                changed.set()

            reader = asyncio.create_task(self._read(ws, on_event))
            follower: asyncio.Task[None] | None = None
            try:
                for event_type in WATCHED_EVENTS:
                    await self._command(ws, {"type": "subscribe_events", "event_type": event_type})
                config = _mapping(await self._command(ws, {"type": "get_config"}), "get_config")
                if config.get("state", RUNNING) == RUNNING:  # older versions do not say: taken as running
                    started.set()
                else:
                    self._set_status(State.STARTING)
                follower = asyncio.create_task(self._follow(ws, started, changed))
                done, _ = await asyncio.wait((reader, follower), return_when=asyncio.FIRST_COMPLETED)
                for task in (reader, follower):  # the reader's error first: it is why a read failed
                    if task in done:
                        task.result()
            finally:
                tasks = [reader] if follower is None else [reader, follower]
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)  # not `await task`, whose CancelledError would hide a stop()
                for task in tasks:
                    if not task.cancelled():
                        task.exception()  # retrieved: the error that matters was raised above

    async def _follow(
        self, ws: aiohttp.ClientWebSocketResponse, started: asyncio.Event, changed: asyncio.Event
    ) -> None:
        """Read the names once Home Assistant has started, then again after each burst of events
        (`refresh_delay_s`, so that a burst costs one read), or `reread_s` after the last read. An
        event during a read sets `changed` again, so nothing it changed is missed. Only the first
        read's failure ends the connection; a later one that Home Assistant answers with an error,
        or not at all, keeps the last good names until the next read."""
        await started.wait()
        changed.clear()
        await self._load(ws)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reread_s):
                    await changed.wait()
            await asyncio.sleep(self._refresh_delay_s)
            changed.clear()
            try:
                await self._load(ws)
            except HomeAssistantError as exc:  # _command turns a timeout into one
                self._set_status(self._status.state, self._safe(str(exc)))

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
        return _mapping(message.json(), "a message")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, on_event: Callable[[object], None]) -> None:
        """Dispatch results to their commands and events to `on_event`, until the connection closes;
        then every command still waiting fails at once, with the reader's error, not at its timeout."""
        error: Exception = HomeAssistantError("Home Assistant closed the connection")
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.ERROR:
                    raise HomeAssistantError(f"the connection failed: {ws.exception()}")
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = message.json()
                for item in data if isinstance(data, list) else [data]:  # Home Assistant may coalesce messages
                    item = _mapping(item, "a message")
                    command_id = item.get("id")
                    future = self._pending.get(command_id) if isinstance(command_id, int) else None
                    if item.get("type") == "result" and future is not None:
                        if not future.done():
                            future.set_result(item)
                    elif item.get("type") == "event":
                        event = item.get("event")
                        on_event(event.get("event_type") if isinstance(event, dict) else None)
        except Exception as exc:
            error = exc
            raise
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)

    async def _command(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> Any:
        self._next_id += 1
        command_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            await ws.send_json({"id": command_id, **message})
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # not wait_for: see _connection
                answer = await future
        except TimeoutError:
            raise HomeAssistantError(f"{message['type']}: no answer in {REQUEST_TIMEOUT_S:g} s") from None
        finally:
            self._pending.pop(command_id, None)
        if answer.get("success") is True:
            return answer.get("result")
        error = answer.get("error")
        code, text = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, error)
        if code == "unauthorized":
            raise AuthFailed(f"{message['type']} is for administrators: the token must be an administrator's")
        raise HomeAssistantError(f"{message['type']} failed: {code or 'unknown_error'}: {text or ''}".rstrip(": "))

    async def _load(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read every name and make them the current list. Logged at INFO only when that is news (other
        names, a connection's first read, a recovery): a re-read every `reread_s` would fill the log."""
        home = await self._read_home(ws)
        news = home != self._home or self._status.state != State.LOADED or self._status.last_error is not None
        self._home = home
        count = len(rank_names(home, sys.maxsize))
        self._publish(Status(State.LOADED, count, datetime.datetime.now(datetime.UTC), None))
        log.log(logging.INFO if news else logging.DEBUG, "read %d names from Home Assistant", count)
        async with self._loaded:
            self._loads += 1
            self._loaded.notify_all()

    async def _read_home(self, ws: aiohttp.ClientWebSocketResponse) -> HomeNames:
        exposure = _mapping(await self._command(ws, {"type": "homeassistant/expose_entity/list"}), "exposed entities")
        exposed = [
            entity_id
            for entity_id, assistants in _mapping(exposure.get("exposed_entities"), "exposed entities").items()
            if isinstance(assistants, dict) and assistants.get(ASSISTANT) is True
        ]
        friendly = {}
        for state in _list(await self._command(ws, {"type": "get_states"}), "states"):
            if not isinstance(state, dict) or not isinstance(entity_id := state.get("entity_id"), str):
                continue  # one entity's state not understood leaves out its friendly name, not every name
            attributes = state.get("attributes")
            if isinstance(attributes, dict) and isinstance(name := attributes.get("friendly_name"), str):
                friendly[entity_id] = name
        registry: dict[str, Any] = {}
        if exposed:
            command = {"type": "config/entity_registry/get_entries", "entity_ids": exposed}
            registry = _mapping(await self._command(ws, command), "entity registry")
        entities = []
        for entity_id in exposed:
            entry = registry.get(entity_id)
            entry = entry if isinstance(entry, dict) else {}
            if entry.get("disabled_by"):
                continue
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
        return HomeNames(tuple(entities), _places(_list(areas, "areas")), _places(_list(floors, "floors")))


def _mapping(value: Any, what: str) -> dict[str, Any]:
    """`value` if it is a JSON object (None: an empty one); otherwise the answer is not understood."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HomeAssistantError(f"Home Assistant sent {what} that is not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    """`value` if it is a JSON list (None: an empty one); otherwise the answer is not understood."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise HomeAssistantError(f"Home Assistant sent {what} that are not a JSON list")
    return value


def _strings(values: Any) -> tuple[str, ...]:
    """The text items of a registry list (newer Home Assistant puts null for "the entity's name")."""
    if not isinstance(values, list):
        return ()
    return tuple(value for value in values if isinstance(value, str) and value.strip())


def _places(entries: list[Any]) -> tuple[Place, ...]:
    return tuple(
        Place(entry["name"], _strings(entry.get("aliases")))
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    )
