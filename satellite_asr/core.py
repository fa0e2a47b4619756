"""What every protocol shares: engine, VAD, scheduler, metrics, sessions and readiness, built once.

The daemon (`server.py`) and the offline transcriber both build one `Core`; protocol adapters are
handed it and reach everything through it (see `protocols/__init__.py` for their contract).
Readiness has one source: `engine_ready`, set once the engine has loaded; decodes wait for it,
`/health` reports it. After a decode fails the core probes the engine (a short decode of
silence): `/health` says `degraded` meanwhile and `broken` while probes fail; a broken in-process
engine is restarted (closed and started again) with backoff until a probe succeeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from typing import Any

import numpy as np

from satellite_asr import __version__
from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.config import ConfigError, Settings
from satellite_asr.engines.base import Engine, EngineInfo, StreamOptions
from satellite_asr.engines.factory import create_engine
from satellite_asr.homeassistant.client import HomeAssistantNames, State, Status
from satellite_asr.metrics import Metrics
from satellite_asr.scheduler import FINAL, DecodeScheduler
from satellite_asr.session_manager import SessionManager
from satellite_asr.vad.silero import SileroVad
from satellite_asr.vad.turn import RuleTurnDetector

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0
"""Longest a probe decode (half a second of silence) may take before the engine counts as broken."""
RESTART_BACKOFF_S = (1.0, 60.0)
"""First and longest wait between recovery attempts; the wait doubles after each failed one."""
READY_POLL_S = 0.5
"""How often a broken engine that is not restarted (remote servers) is asked whether it is back."""


class Core:
    """Start with `start()` (the engine loads in the background), end with `close()`.

    `engine` may be given instead of the one the settings name (tests inject doubles).
    """

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings)
        self.metrics = Metrics()
        self.engine.report_batch_sizes(self.metrics.engine_batch_size.observe)
        self.engine.report_redecodes(lambda reason: self.metrics.engine_redecodes.labels(reason).inc())
        self.vad = SileroVad(on_busy=self.metrics.vad_seconds.inc)
        self.engine_ready = asyncio.Event()
        self.home_assistant = self._home_assistant(settings)
        self.scheduler = DecodeScheduler(
            self.engine.info.max_concurrency, self.metrics, self.engine_ready, on_failure=self._decode_failed
        )
        self.sessions = SessionManager(
            vad=self.vad,
            engine=self.engine,
            scheduler=self.scheduler,
            metrics=self.metrics,
            turn_detector=RuleTurnDetector(),
            max_sessions=settings.max_sessions,
            idle_timeout_s=settings.idle_timeout_s,
            wyoming_reserved=settings.wyoming_reserved_sessions,
            home_names=self.household_names,
            home_names_in_context=(
                settings.ha_names_limit if settings.ha_names_limit >= 0 else self.engine.info.context_names
            ),
        )
        self.engine_error: BaseException | None = None
        self._failed = asyncio.Event()
        self._engine_task: asyncio.Task[None] | None = None
        self.engine_status = "ready"
        """Once loaded: `ready`, `degraded` (a decode failed, the probe runs) or `broken` (probes fail)."""
        self._recovery: asyncio.Task[None] | None = None

    @staticmethod
    def _home_assistant(settings: Settings) -> HomeAssistantNames | None:
        """The names client when Home Assistant is configured and the names are wanted."""
        if not (settings.household_names and settings.ha_url):
            return None
        return HomeAssistantNames(settings.ha_url, settings.home_assistant_token)

    def household_names(self) -> list[str]:
        """The home's names, ranked (the last good list; empty before the first load or when off)."""
        return self.home_assistant.names(sys.maxsize) if self.home_assistant is not None else []

    @property
    def engine_info(self) -> EngineInfo:
        return self.engine.info

    @property
    def ready(self) -> bool:
        """Loaded and not known to be failing: `/health` answers 200."""
        return self.status == "ready"

    @property
    def status(self) -> str:
        """`loading`, `failed`, or once loaded `ready`, `degraded` (a decode failed, the probe runs) or
        `broken` (probes fail, or the engine says it cannot decode: no remote server answers, even
        while no session has tried one)."""
        if not self.engine_ready.is_set():
            return "failed" if self.engine_error else "loading"
        return self.engine_status if self.engine.ready else "broken"

    def _decode_failed(self, error: Exception) -> None:
        if self._recovery is None or self._recovery.done():
            log.warning("engine %s: a decode failed (%r); probing it", self.engine.info.name, error)
            self.engine_status = "degraded"
            self._recovery = asyncio.create_task(self._recover(), name="engine-recovery")

    async def _recover(self) -> None:
        """Probe until the engine decodes again, restarting an in-process one between probes."""
        wait, longest = RESTART_BACKOFF_S
        while not await self._probe():
            self.engine_status = "broken"
            log.error("engine %s is broken; next attempt in %.0f s", self.engine.info.name, wait)
            await self._back_off(wait)
            wait = min(wait * 2, longest)
            if self.engine.restartable:
                await self._restart()
        if self.engine_status != "ready":
            log.info("engine %s works again", self.engine.info.name)
        self.engine_status = "ready"

    async def _back_off(self, wait: float) -> None:
        """Wait `wait` seconds, or less: until an engine that was not ready says it is again (a remote
        server is back), so that the daemon serves again as soon as it can, not after the backoff."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        was_down = False
        while (left := until - loop.time()) > 0:
            was_down = was_down or not self.engine.ready
            await asyncio.sleep(min(left, READY_POLL_S))
            if was_down and self.engine.ready:
                return

    async def _probe(self) -> bool:
        languages = self.engine.info.languages
        options = StreamOptions(language=self.settings.default_language or (languages[0] if languages else None))
        stream = self.engine.open_stream(options)
        try:
            async with self.scheduler.slot("engine-probe", FINAL):
                await asyncio.wait_for(stream.final(np.zeros(SAMPLE_RATE // 2, dtype=np.float32)), PROBE_TIMEOUT_S)
        except Exception as exc:
            log.warning("engine %s: probe failed: %r", self.engine.info.name, exc)
            return False
        return True

    async def _restart(self) -> None:
        log.warning("restarting engine %s", self.engine.info.name)
        self.metrics.engine_restarts.inc()
        try:
            await self.engine.close()
            await self.engine.start()
        except Exception as exc:
            log.error("engine %s: restart failed: %r", self.engine.info.name, exc)

    async def start(self) -> None:
        """VAD and session housekeeping now; the engine loads in the background (`wait_ready`)."""
        await self.vad.start()
        await self.sessions.start()
        if self.home_assistant is not None:
            await self.home_assistant.start()
        self._engine_task = asyncio.create_task(self._load_engine(), name="engine-load")

    async def _load_engine(self) -> None:
        try:
            await self.engine.start()
            self._check_language()
        except Exception as exc:  # said by whoever waits for the engine (`wait_ready`, `wait_failed`), once
            self.engine_error = exc
            self._failed.set()
            return
        self.engine_ready.set()

    def _check_language(self) -> None:
        """The `language` setting is one the loaded model has, as the model names it (`en-US` is
        `en`): every protocol hands it to the engine for a session whose client named none."""
        language = self.settings.language
        if not language:
            return
        info = self.engine.info
        supported = info.supported_language(language)
        if supported is None:
            raise ConfigError(
                f"language: {language!r} is not one of the languages of {info.model} ({', '.join(info.languages)})"
            )
        if supported != language:
            self.settings = dataclasses.replace(self.settings, language=supported)

    async def wait_ready(self) -> None:
        """Until the engine has loaded; raises the load error if it failed."""
        ready = asyncio.create_task(self.engine_ready.wait())
        failed = asyncio.create_task(self._failed.wait())
        await asyncio.wait([ready, failed], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        failed.cancel()
        if self.engine_error is not None:
            raise self.engine_error

    async def wait_failed(self) -> BaseException:
        """Until the engine fails to load (serve logs the error and exits then)."""
        await self._failed.wait()
        assert self.engine_error is not None
        return self.engine_error

    async def close(self) -> None:
        """Sessions finalized and closed, then the model and VAD freed."""
        await self.sessions.close_all("shutdown")
        if self.home_assistant is not None:
            await self.home_assistant.stop()
        for task in (self._engine_task, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.engine.close()
        await self.vad.close()

    def health(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "status": self.status,
            "ready": self.ready,
            "engine": info.name,
            "model": info.model,
            "languages": info.languages,
            "active_sessions": len(self.sessions),
            "version": __version__,
            "home_assistant": (
                self.home_assistant.status if self.home_assistant is not None else Status(State.DISABLED)
            ).as_dict(),
        }
