"""Uploaded files decoded to 16 kHz mono: what a crafted header can make the decoder do."""

from __future__ import annotations

import weakref

import av
import numpy as np
import pytest

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.audio_files import MIN_SAMPLE_RATE, RESAMPLE_STEP_SAMPLES, AudioFile, NotAudioError, _pieces
from tests.helpers import u8_wav

HOUR = 3600.0


def tone(rate: int, seconds: float) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)


def decoded(audio_file: AudioFile) -> np.ndarray:
    return np.concatenate(list(audio_file.chunks()))


def test_a_sample_rate_below_the_minimum_is_refused_on_opening() -> None:
    with pytest.raises(NotAudioError, match=f"100 Hz, below the {MIN_SAMPLE_RATE} Hz"):
        AudioFile.open(u8_wav(np.zeros(2000), 100), HOUR)


def test_a_huge_frame_is_resampled_in_bounded_steps_to_the_same_audio() -> None:
    """A header asking for 60,000-sample frames: no step holds more than a piece of one resampled,
    and the audio is what ordinary 4096-sample frames give."""
    samples = tone(8000, 30)
    huge_frames = AudioFile.open(u8_wav(samples, 8000, block_align=60000), HOUR)
    largest = 0
    fill = huge_frames._fill

    def measured_fill() -> None:
        nonlocal largest
        fill()
        largest = max(largest, *(pending.size for pending in huge_frames._pending), 0)

    huge_frames._fill = measured_fill  # type: ignore[method-assign]
    audio = decoded(huge_frames)
    assert largest <= RESAMPLE_STEP_SAMPLES * SAMPLE_RATE // 8000 + 64, largest
    np.testing.assert_array_equal(audio, decoded(AudioFile.open(u8_wav(samples, 8000), HOUR)))


def planar_frame(format: str, dtype: type, layout: str, samples: int) -> tuple[av.AudioFrame, np.ndarray]:
    """A planar frame of known samples (one row per channel). Only the real planes are written:
    PyAV lists more than there are channels for 8 and 16 of them."""
    channels = av.AudioLayout(layout).nb_channels
    values = (np.arange(channels * samples).reshape(channels, samples) % 30000 - 15000).astype(dtype)
    frame = av.AudioFrame(format=format, layout=layout, samples=samples)
    frame.sample_rate = 16000
    planes = frame.planes
    for channel in range(channels):
        planes[channel].update(values[channel].tobytes())
    return frame, values


@pytest.mark.parametrize("layout", ["7.1", "hexadecagonal"])
@pytest.mark.parametrize(("format", "dtype"), [("s16p", np.int16), ("fltp", np.float32)])
def test_a_huge_planar_frame_of_many_channels_is_cut_into_pieces_of_the_same_samples(
    format: str, dtype: type, layout: str
) -> None:
    """Without only the real planes copied, 8 channels crashed the process (a 9th plane, no buffer)."""
    frame, values = planar_frame(format, dtype, layout, RESAMPLE_STEP_SAMPLES * 2 + 5000)
    pieces = list(_pieces(frame))
    assert len(pieces) == 3
    channels = values.shape[0]
    joined = np.concatenate(
        [
            np.stack([np.frombuffer(bytes(piece.planes[c]), dtype=dtype)[: piece.samples] for c in range(channels)])
            for piece in pieces
        ],
        axis=1,
    )
    np.testing.assert_array_equal(joined, values)
    assert {(piece.format.name, piece.layout.name, piece.sample_rate) for piece in pieces} == {(format, layout, 16000)}


def test_close_drops_the_decoded_audio_not_handed_on() -> None:
    audio_file = AudioFile.open(u8_wav(tone(8000, 10), 8000), HOUR)
    chunks = audio_file.chunks()
    next(chunks)
    pending = [weakref.ref(array) for array in audio_file._pending]
    assert pending, "decoded audio waits for the next chunk"
    audio_file.close()
    assert all(ref() is None for ref in pending), "close() frees it while the AudioFile is still referenced"
