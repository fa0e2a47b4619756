"""The daemon: the shared core behind the HTTP/WebSocket and Wyoming servers.

The servers bind before the engine has loaded, so clients and health checks get answers at once;
`/health` says 503 until the engine is ready and decodes wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from satellite_asr.config import ConfigError, Settings
from satellite_asr.core import Core
from satellite_asr.discovery import Discovery
from satellite_asr.engines.base import Engine
from satellite_asr.protocols import websocket, wyoming

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
"""The browser microphone page, served at `/` with its scripts under `/static/`."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANDLER_GRACE_S = 1.0
"""At shutdown, how long HTTP handlers may still run once their connections were closed or cut."""


class Daemon:
    """Start with `start()`, stop with `stop()`; `engine` may be given (tests inject doubles)."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.core = Core(settings, engine)
        self.http_port = settings.http_port
        address = wyoming.parse_uri(settings.wyoming_uri)
        self.wyoming = wyoming.WyomingServer(address, self.core) if address is not None else None
        self.wyoming_port: int | None = None
        """The bound Wyoming TCP port once started (None when off or on a unix socket)."""
        self.discovery: Discovery | None = None
        self.websocket = websocket.WebSocketHandler(self.core)
        self._runner: web.AppRunner | None = None

    def routes(self) -> list[tuple[str, str, Handler]]:
        """Every HTTP route: method, path, handler (the page's scripts are served under `/static/`)."""
        return [
            ("GET", websocket.PATH, self.websocket.handle),
            ("GET", "/health", self._health),
            ("GET", "/metrics", self._metrics),
            ("GET", "/", self._index),
        ]

    async def start(self) -> None:
        await self.core.start()
        app = web.Application()
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        app.router.add_static("/static/", WEB_DIR)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=HANDLER_GRACE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.http_port, ssl_context=self._ssl_context())
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        log.info("HTTP/WebSocket server on %s:%d (ws path %s)", self.settings.host, self.http_port, websocket.PATH)
        if self.wyoming is not None:
            await self.wyoming.start()
            self.wyoming_port = self.wyoming.port
        if self.settings.zeroconf:
            self.discovery = Discovery.from_settings(self.settings, self.http_port, self.wyoming_port)
            await self.discovery.start()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        except OSError as exc:  # ssl.SSLError included: a start-up problem to name, not a traceback
            raise ConfigError(
                f"tls_cert/tls_key: cannot load {self.settings.tls_cert} with {self.settings.tls_key}: {exc}"
            ) from None
        return context

    async def stop(self) -> None:
        """Shutdown within `shutdown_timeout_s`, whatever clients do: stop accepting, send pending
        finals, close every connection (WebSocket 1001, Wyoming end of stream); when time runs out,
        cut the connections left and cancel what they had in flight. Then the model is freed."""
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await self._close_gracefully()
        except TimeoutError:
            log.warning("shutdown: connections still open after %.1f s; cutting them", self.settings.shutdown_timeout_s)
        if self.wyoming is not None:
            await self.wyoming.abort()
        self.websocket.abort_all()
        await self.core.sessions.cancel_all("shutdown")
        if self._runner is not None:
            await self._runner.cleanup()
        await self.core.close()

    async def _close_gracefully(self) -> None:
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        # Side by side, so that a client that does not read holds up only its own connection.
        await asyncio.gather(self._close_wyoming(), self._close_websockets())
        await self.core.sessions.close_all("shutdown")

    async def _close_wyoming(self) -> None:
        if self.wyoming is not None:
            await self.wyoming.stop()

    async def _close_websockets(self) -> None:
        await self.core.sessions.close_all("shutdown", protocol="websocket")
        await self.websocket.close_all()  # the connections without a session

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.health(), status=200 if self.core.ready else 503)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.core.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )
