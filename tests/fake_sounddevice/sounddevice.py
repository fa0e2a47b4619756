"""A stand-in for the `sounddevice` package: an input device that plays a WAV file.

Put this directory first on PYTHONPATH (or in sys.modules) to run `satellite-asr stream --mic`
where there is no audio device. It calls the stream's callback from its own thread at real-time
pace, like PortAudio. Environment:
- SATELLITE_ASR_FAKE_MIC_WAV: the mono 16-bit WAV the "microphone" hears (required);
- SATELLITE_ASR_FAKE_MIC_RATES: comma-separated rates the device accepts (default: the file's).
When the file is played the device goes quiet (no more callbacks) and writes END_MARKER to
stderr, so a test knows every captured block has been handed over.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import wave
from dataclasses import dataclass
from typing import Any

END_MARKER = "fake microphone: end of file"


class PortAudioError(Exception):
    pass


@dataclass
class CallbackFlags:
    input_overflow: bool = False


def _wav() -> tuple[bytes, int]:
    with wave.open(os.environ["SATELLITE_ASR_FAKE_MIC_WAV"], "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.readframes(wav.getnframes()), wav.getframerate()


def _rates() -> set[int]:
    listed = os.environ.get("SATELLITE_ASR_FAKE_MIC_RATES")
    return {int(rate) for rate in listed.split(",")} if listed else {_wav()[1]}


def query_devices(device: Any = None, kind: str | None = None) -> dict[str, Any]:
    if device not in (None, 0, "fake"):
        raise ValueError(f"No input device matching {device!r}")
    return {"name": "fake microphone", "max_input_channels": 1, "default_samplerate": float(_wav()[1])}


def check_input_settings(device: Any = None, channels: int = 1, dtype: str = "int16", samplerate: float = 0) -> None:
    if int(samplerate) not in _rates():
        raise PortAudioError(f"Invalid sample rate {samplerate}")


class RawInputStream:
    def __init__(self, *, samplerate: float, blocksize: int, device: Any, channels: int, dtype: str, callback: Any):
        pcm, rate = _wav()
        if int(samplerate) != rate or channels != 1 or dtype != "int16":
            raise PortAudioError(f"the fake device plays its file as is: {rate} Hz mono int16")
        self._pcm = pcm
        self._block_bytes = blocksize * 2
        self._seconds_per_block = blocksize / rate
        self._callback = callback
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._play, name="fake-portaudio", daemon=True)
        self.stopped = True

    def _play(self) -> None:
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(self._pcm), self._block_bytes)):
            time.sleep(max(0.0, started + (index + 1) * self._seconds_per_block - time.monotonic()))
            if not self._running.is_set():
                return
            block = self._pcm[offset : offset + self._block_bytes]
            self._callback(memoryview(block), len(block) // 2, None, CallbackFlags())
        print(END_MARKER, file=sys.stderr, flush=True)

    def start(self) -> None:
        self.stopped = False
        self._running.set()
        self._thread.start()

    def stop(self) -> None:
        """Like PortAudio: returns once no callback is running or will run."""
        self._running.clear()
        if self._thread.is_alive():
            self._thread.join()
        self.stopped = True

    def close(self) -> None:
        self.stop()
