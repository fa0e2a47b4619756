"""The daemon: shared VAD, engine, scheduler and sessions behind the HTTP/WebSocket server.

The servers bind before the engine has loaded, so clients and health checks get answers at once;
`/health` says 503 until the engine is ready and decodes wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from satellite_asr import __version__
from satellite_asr.config import ConfigError, Settings
from satellite_asr.discovery import Discovery
from satellite_asr.engines.base import Engine
from satellite_asr.engines.factory import create_engine
from satellite_asr.metrics import Metrics
from satellite_asr.protocols import websocket, wyoming
from satellite_asr.scheduler import DecodeScheduler
from satellite_asr.session_manager import SessionManager
from satellite_asr.vad.silero import SileroVad

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
"""The browser microphone page, served at `/` with its scripts under `/static/`."""


class Daemon:
    """Start with `start()`, stop with `stop()`; `engine` may be given (tests inject doubles)."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings)
        self.metrics = Metrics()
        self.engine.report_batch_sizes(self.metrics.engine_batch_size.observe)
        self.vad = SileroVad(on_busy=self.metrics.vad_seconds.inc)
        self.scheduler = DecodeScheduler(self.engine.info.max_concurrency, self.metrics)
        self.sessions = SessionManager(
            vad=self.vad,
            engine=self.engine,
            scheduler=self.scheduler,
            metrics=self.metrics,
            max_sessions=settings.max_sessions,
            idle_timeout_s=settings.idle_timeout_s,
        )
        self.http_port = settings.http_port
        address = wyoming.parse_uri(settings.wyoming_uri)
        self.wyoming = (
            wyoming.WyomingServer(address, self.sessions, settings, self.metrics, lambda: self.engine.info)
            if address is not None
            else None
        )
        self.wyoming_port: int | None = None
        """The bound Wyoming TCP port once started (None when off or on a unix socket)."""
        self.discovery: Discovery | None = None
        self.engine_error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._failed = asyncio.Event()

    async def start(self) -> None:
        await self.vad.start()
        await self.sessions.start()
        app = web.Application()
        app.router.add_get(
            websocket.PATH,
            websocket.WebSocketHandler(self.sessions, self.settings, self.metrics, lambda: self.engine.info).handle,
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", WEB_DIR)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
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
        self._engine_task = asyncio.create_task(self._load_engine(), name="engine-load")

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

    async def _load_engine(self) -> None:
        try:
            await self.engine.start()
        except Exception as exc:
            log.error("engine %s failed to load: %s", self.engine.info.name, exc)
            self.engine_error = exc
            self._failed.set()
            return
        self.scheduler.engine_ready.set()

    async def wait_ready(self) -> None:
        """Until the engine has loaded; raises the load error if it failed."""
        ready = asyncio.create_task(self.scheduler.engine_ready.wait())
        failed = asyncio.create_task(self._failed.wait())
        await asyncio.wait([ready, failed], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        failed.cancel()
        if self.engine_error is not None:
            raise self.engine_error

    async def wait_failed(self) -> BaseException:
        """Until the engine fails to load (serve exits then)."""
        await self._failed.wait()
        assert self.engine_error is not None
        return self.engine_error

    async def stop(self) -> None:
        """Shutdown: pending finals are sent, connections closed, then the model is freed."""
        if self.discovery is not None:
            await self.discovery.stop()
        if self.wyoming is not None:
            await self.wyoming.stop()
        await self.sessions.close_all("shutdown")
        if self._runner is not None:
            await self._runner.cleanup()
        if self._engine_task is not None:
            self._engine_task.cancel()
            await asyncio.gather(self._engine_task, return_exceptions=True)
        await self.engine.close()
        await self.vad.close()

    def health(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "status": "ready" if self.engine.ready else ("failed" if self.engine_error else "loading"),
            "ready": self.engine.ready,
            "engine": info.name,
            "model": info.model,
            "languages": info.languages,
            "active_sessions": len(self.sessions),
            "version": __version__,
        }

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health(), status=200 if self.engine.ready else 503)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )
