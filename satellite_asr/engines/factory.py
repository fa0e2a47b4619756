"""Which engine the settings ask for, built but not yet loaded."""

from __future__ import annotations

import logging

from satellite_asr.config import Settings
from satellite_asr.engines.base import Engine
from satellite_asr.engines.whisper import WhisperEngine

log = logging.getLogger(__name__)


def create_engine(settings: Settings) -> Engine:
    name = settings.engine
    if name == "auto":
        name = "whisper"
        log.info("engine auto: using whisper (the CPU engine)")
    if name == "whisper":
        return WhisperEngine(
            settings.model,
            device=settings.whisper_device,
            compute_type=settings.whisper_compute_type,
            threads=settings.whisper_threads,
            concurrency=settings.decode_concurrency,
            beam_size=settings.whisper_beam_size,
            short_context=settings.whisper_short_context,
        )
    raise NotImplementedError(f"engine {name!r} is not available in this build")
