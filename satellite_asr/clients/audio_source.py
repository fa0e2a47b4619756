"""Where `satellite-asr stream` gets its audio: a WAV file or the microphone, through one interface.

Both yield blocks of about 100 ms of mono signed 16-bit PCM at their own rate (the file's, or the
device's), which the client declares in its `config` message; the daemon resamples. So a WAV
file exercises exactly the path the microphone takes, and tests need no audio device.
`stop()` ends a source after the audio it has already captured, which is how Ctrl-C still gets
the last words transcribed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from satellite_asr.audio import MAX_RATE, MIN_RATE, SAMPLE_RATE
from satellite_asr.clients.wav import read_wav

BLOCK_SECONDS = 0.1
FAST_LEAD_S = 10.0
"""How far ahead of real time a file sent "as fast as possible" runs. The daemon takes a session's
audio no further ahead than its `max_feed_ahead_s` (20 s by default) and reads on ahead of that
only `websocket_read_ahead_mb` (16 MiB); what is sent beyond that waits in buffers, and so does
the keepalive ping behind it, whose answer must come within `stream_client.PING_S`."""


class AudioSource(Protocol):
    sample_rate: int
    """Rate of the PCM that `blocks()` yields (mono s16le)."""

    def blocks(self) -> AsyncGenerator[bytes, None]:
        """Blocks of about `BLOCK_SECONDS`, as they become available, until the source ends or is stopped."""
        ...

    def stop(self) -> None:
        """End after the audio captured so far; safe to call more than once."""
        ...


def mono_pcm(pcm: bytes, channels: int) -> bytes:
    """Interleaved s16le frames of `channels` channels as one (their mean): the WebSocket protocol
    takes mono audio, and `transcribe` mixes a file's channels the same way."""
    if channels == 1:
        return pcm
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    mixed: bytes = np.round(frames.mean(axis=1)).astype("<i2").tobytes()
    return mixed


class WavSource:
    """A 16-bit WAV file (its channels mixed to mono), played at real-time pace like a microphone,
    or (`realtime=False`) as fast as the daemon takes it, at most `FAST_LEAD_S` ahead of real time."""

    def __init__(self, path: str | Path, *, realtime: bool = True) -> None:
        wav = read_wav(path)
        self.pcm = mono_pcm(wav.pcm, wav.channels)
        self.sample_rate = wav.sample_rate
        self.realtime = realtime
        self.stopped = False

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        block_bytes = int(BLOCK_SECONDS * self.sample_rate) * 2
        started = time.monotonic()
        lead = 0.0 if self.realtime else FAST_LEAD_S
        for index, offset in enumerate(range(0, len(self.pcm), block_bytes)):
            # A microphone hands over a block once it has been captured: at the block's end.
            await asyncio.sleep(max(0.0, started + (index + 1) * BLOCK_SECONDS - lead - time.monotonic()))
            if self.stopped:
                return
            yield self.pcm[offset : offset + block_bytes]

    def stop(self) -> None:
        self.stopped = True


class MicrophoneUnavailable(Exception):
    """The microphone cannot be used: sounddevice or PortAudio missing, or no usable input device."""


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError:
        raise MicrophoneUnavailable(
            "the microphone needs the optional sounddevice package: in the checkout, .venv/bin/pip install -e '.[mic]'"
        ) from None
    except OSError as exc:
        raise MicrophoneUnavailable(
            f"sounddevice cannot load PortAudio ({exc}); on Debian or Ubuntu: apt-get install libportaudio2"
        ) from None
    return sounddevice


class MicrophoneSource:
    """An input device through sounddevice (PortAudio), opened when `blocks()` starts.

    It records at 16 kHz when the device can (nothing to resample), otherwise at the device's
    default rate. PortAudio calls back on its own thread; blocks cross to the event loop in order.
    """

    def __init__(self, device: str | int | None = None) -> None:
        self._sd = _import_sounddevice()
        self.device = device
        try:
            info = self._sd.query_devices(device, "input")
        except (ValueError, self._sd.PortAudioError) as exc:
            raise MicrophoneUnavailable(
                f"no usable input device ({exc}); list them with: python -m sounddevice"
            ) from None
        self.name = str(info["name"])
        self.sample_rate = self._pick_rate(int(info["default_samplerate"]))
        self._stream: Any = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self.overflows = 0
        """Times the device dropped input because the process did not keep up."""

    def _pick_rate(self, default: int) -> int:
        try:
            self._sd.check_input_settings(self.device, channels=1, dtype="int16", samplerate=SAMPLE_RATE)
        except (ValueError, self._sd.PortAudioError):
            if not MIN_RATE <= default <= MAX_RATE:
                raise MicrophoneUnavailable(
                    f"input device {self.name!r} records at {default} Hz; the daemon takes {MIN_RATE}-{MAX_RATE} Hz"
                ) from None
            return default
        return SAMPLE_RATE

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        if self._stopped:
            return
        loop = self._loop = asyncio.get_running_loop()

        def captured(data: Any, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                loop.call_soon_threadsafe(self._count_overflow)
            loop.call_soon_threadsafe(self._queue.put_nowait, bytes(data))

        try:
            self._stream = self._sd.RawInputStream(
                samplerate=self.sample_rate,
                blocksize=int(BLOCK_SECONDS * self.sample_rate),
                device=self.device,
                channels=1,
                dtype="int16",
                callback=captured,
            )
            self._stream.start()
        except self._sd.PortAudioError as exc:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            raise MicrophoneUnavailable(f"cannot open input device {self.name!r}: {exc}") from None
        try:
            while (block := await self._queue.get()) is not None:
                yield block
        finally:
            self.stop()
            self._stream.close()

    def _count_overflow(self) -> None:
        self.overflows += 1

    def stop(self) -> None:
        """Stops capture; blocks the device handed over before it stopped are still yielded."""
        if self._stopped:
            return
        self._stopped = True
        if self._stream is not None and self._loop is not None:
            self._stream.stop()  # returns after PortAudio's last callback, so its blocks are queued first
            self._loop.call_soon(self._queue.put_nowait, None)
