"""Satellite ASR: streaming speech-to-text for Home Assistant voice satellites."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("satellite-asr")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
