"""Reading WAV files for the command-line tools (16-bit PCM, any rate and channel count)."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satellite_asr.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, Audio, PcmDecoder


@dataclass(frozen=True)
class WavFile:
    pcm: bytes
    """Little-endian signed 16-bit frames, interleaved channels."""
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * self.channels * self.sample_rate)

    def to_16k_mono(self) -> Audio:
        decoder = PcmDecoder("s16le", self.sample_rate, self.channels)
        samples = decoder.decode(self.pcm).samples
        tail = decoder.flush()
        return np.concatenate([samples, tail]) if tail.size else samples


def read_wav(path: str | Path) -> WavFile:
    """The file's PCM, whole frames only (a file cut off inside a frame loses that frame); ValueError
    with a readable message when it cannot be read or is not 16-bit PCM WAV."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise ValueError(
                    f"{path}: only 16-bit PCM WAV is supported, this one has {8 * wav.getsampwidth()}-bit samples"
                )
            if not MIN_RATE <= wav.getframerate() <= MAX_RATE:
                raise ValueError(
                    f"{path}: its sample rate is {wav.getframerate()} Hz; the daemon takes {MIN_RATE} to {MAX_RATE} Hz"
                )
            if wav.getnchannels() > MAX_CHANNELS:
                raise ValueError(f"{path}: it has {wav.getnchannels()} channels; at most {MAX_CHANNELS} are taken")
            pcm = wav.readframes(wav.getnframes())
            whole = len(pcm) - len(pcm) % (2 * wav.getnchannels())  # a file cut off inside its last frame
            return WavFile(pcm[:whole], wav.getframerate(), wav.getnchannels())
    except EOFError:  # wave's own has no message
        raise ValueError(f"{path}: not a PCM WAV file (too short for a WAV header)") from None
    except wave.Error as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
