"""The daemon's one audio format (16 kHz mono float32), wire PCM decoded to it, and the session's buffer.

`SAMPLE_RATE` and `Audio` live here, apart from engines, VAD and protocols, because all of them use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr

SAMPLE_RATE = 16000
"""Every engine and the VAD take 16 kHz mono float32 in [-1, 1]; protocol adapters resample to it."""

Audio = npt.NDArray[np.float32]

ENCODINGS = {"f32le": 4, "s16le": 2, "pcmu": 1, "pcma": 1}
"""Accepted encodings and their sample widths in bytes: float32 and 16-bit PCM, G.711 mu-law and A-law."""
MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 64
"""More than any microphone array sends; a frame of 2**62 channels is a malformed header, not audio."""


def _g711_tables() -> dict[str, Audio]:
    """The 256 sample values of each G.711 code (ITU-T G.711), scaled to [-1, 1].

    Decoded here with lookup tables because the standard library's `audioop` is deprecated (removed
    in Python 3.13) and no dependency of the daemon decodes G.711.
    """
    codes = np.arange(256, dtype=np.int32)
    ulaw = ~codes & 0xFF
    exponent, mantissa = (ulaw >> 4) & 0x07, ulaw & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    mu = np.where(ulaw & 0x80, -magnitude, magnitude)
    alaw = codes ^ 0x55
    exponent, mantissa = (alaw >> 4) & 0x07, alaw & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    a = np.where(alaw & 0x80, magnitude, -magnitude)
    return {name: (values / 32768.0).astype(np.float32) for name, values in (("pcmu", mu), ("pcma", a))}


G711 = _g711_tables()
"""Encoding name -> float32 value of each byte."""


def to_pcm16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] as little-endian 16-bit PCM (`.tobytes()` for the wire or a WAV).

    The exact inverse of how `PcmDecoder` reads `s16le` (`int16 / 32768`): scaled by 32768, clipped
    to -32768..32767, truncated toward zero, so 16-bit audio read as float comes back byte for byte
    (Home Assistant's microVAD gets its own samples). Returns the array so that callers may slice it
    by sample; the one copy to bytes is theirs.
    """
    scaled = np.multiply(samples, 32768.0, dtype=np.float64)  # float16 would round 32767 up to 32768 and wrap
    np.clip(scaled, -32768.0, 32767.0, out=scaled)
    return scaled.astype("<i2")


class AudioFormatError(ValueError):
    """Bytes that cannot be PCM of the declared format (the frame is dropped, the stream goes on)."""


WAV_FORMATS = {(1, 16): "s16le", (3, 32): "f32le", (6, 8): "pcma", (7, 8): "pcmu"}
"""A WAV header's format tag and bits per sample, as the daemon's encodings."""
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
"""A `fmt ` chunk whose format is its subformat GUID's first two bytes (FFmpeg and sox write it for
more than two channels or 16 bits)."""


def wav_stream_format(header: bytes) -> tuple[str, int, int, bytes] | None:
    """A WAV stream's encoding, rate and channels from its header, and the audio after it (its sizes
    not read: a streaming header's are unknown); None while `header` ends before its `data` chunk
    begins (a header in parts, or long chunks before its audio). `AudioFormatError` for one
    that is not RIFF/WAVE, has no `fmt ` before its `data`, or a format this server does not
    decode (16-bit PCM, 32-bit float or G.711, as such or as an extensible format's subformat)."""
    if len(header) < 12:
        return None
    if header[8:12] != b"WAVE":
        raise AudioFormatError("the first audio chunk's RIFF header is not WAVE")
    at, found = 12, None
    while True:
        if at + 8 > len(header):
            return None
        kind, size = header[at : at + 4], int.from_bytes(header[at + 4 : at + 8], "little")
        if kind == b"data":
            break
        if at + 8 + size > len(header):
            return None
        if kind == b"fmt " and size >= 16:
            found = list(struct.unpack("<HHIIHH", header[at + 8 : at + 24]))
            if found[0] == WAVE_FORMAT_EXTENSIBLE and size >= 40:
                found[0] = int.from_bytes(header[at + 32 : at + 34], "little")
        at += 8 + size + size % 2
    if found is None:
        raise AudioFormatError("the first audio chunk's WAV header has no fmt chunk before its data")
    tag, channels, rate, _, _, bits = found
    encoding = WAV_FORMATS.get((tag, bits))
    if encoding is None:
        raise AudioFormatError(
            f"this server takes 16-bit PCM, 32-bit float or G.711; the WAV header gives format {tag}, {bits} bits"
        )
    return encoding, rate, channels, header[at + 8 :]


@dataclass
class DecodedAudio:
    samples: Audio
    non_finite: int
    """NaN/Inf samples that were replaced by silence."""


class PcmDecoder:
    """Decodes one stream's PCM frames: any width/rate/channels in, 16 kHz mono float32 out.

    G.711 (`pcmu`, `pcma`) is 8 kHz by definition, but any rate is taken as declared.

    Resampling is stateful across frames (soxr's streaming resampler), so frame boundaries leave
    no clicks and no drift.
    """

    def __init__(self, encoding: str = "f32le", sample_rate: int = SAMPLE_RATE, channels: int = 1) -> None:
        if encoding not in ENCODINGS:
            raise AudioFormatError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise AudioFormatError(f"sample rate {sample_rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioFormatError(f"channel count {channels} is outside 1-{MAX_CHANNELS}")
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_bytes = ENCODINGS[encoding] * channels
        self._resampler = self._new_resampler()

    def _new_resampler(self) -> soxr.ResampleStream | None:
        if self.sample_rate == SAMPLE_RATE:
            return None
        return soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32")

    def check_whole_frames(self, data: bytes | bytearray | memoryview) -> None:
        """Raise `AudioFormatError` unless `data` is whole frames (every sample of every channel)."""
        if len(data) % self.frame_bytes:
            raise AudioFormatError(
                f"{len(data)} bytes is not a whole number of {self.encoding} frames "
                f"({self.frame_bytes} bytes per frame with {self.channels} channel(s))"
            )

    def decode(self, data: bytes | bytearray | memoryview) -> DecodedAudio:
        self.check_whole_frames(data)
        non_finite = 0
        if self.encoding == "s16le":
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        elif self.encoding in G711:
            samples = G711[self.encoding][np.frombuffer(data, dtype=np.uint8)]
        else:
            samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
            finite = np.isfinite(samples)
            non_finite = int(samples.size - np.count_nonzero(finite))
            if non_finite:
                samples = np.where(finite, samples, np.float32(0.0))
            np.clip(samples, -1.0, 1.0, out=samples)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return DecodedAudio(samples.astype(np.float32, copy=False), non_finite)

    def flush(self) -> Audio:
        """Samples the resampler still holds (its filter's delay): at the end of the stream, or when the
        client ends an utterance, so that its last milliseconds are in it. The stream goes on after
        it with a fresh resampler (soxr takes nothing after `last=True`)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler = self._new_resampler()
        return np.asarray(tail, dtype=np.float32)


class AudioBuffer:
    """Samples addressed by their absolute index in the session; old samples can be dropped."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE, dtype=np.float32)
        self._size = 0
        self.base = 0
        """Absolute index of the first sample still held."""

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self.base + self._size

    def append(self, samples: Audio) -> None:
        needed = self._size + samples.size
        if needed > self._data.size:
            grown = np.zeros(max(needed, 2 * self._data.size), dtype=np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : needed] = samples
        self._size = needed

    def slice(self, start: int, end: int) -> Audio:
        """A copy of samples [start, end), clamped to what is held."""
        lo = min(max(start - self.base, 0), self._size)
        hi = min(max(end - self.base, lo), self._size)
        return self._data[lo:hi].copy()

    def drop_before(self, index: int) -> None:
        """Forget samples before absolute `index` (bounded memory between utterances)."""
        cut = min(max(index - self.base, 0), self._size)
        if cut:
            self._data[: self._size - cut] = self._data[cut : self._size]
            self._size -= cut
            self.base += cut
