"""Uploaded files decoded to 16 kHz mono: what a crafted header can make the decoder do."""

from __future__ import annotations

import io
import re
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.audio_files import (
    MAX_BAD_PACKETS_IN_A_ROW,
    MIN_SAMPLE_RATE,
    RESAMPLE_STEP_SAMPLES,
    AudioFile,
    NotAudioError,
    _pieces,
)
from tests.helpers import encoded_audio, u8_wav

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


def adts_then_bad_packets(seconds: float, bad_packets: int) -> tuple[bytes, int]:
    """ADTS AAC of a tone, then 9-byte packets (a valid ADTS header, 2 bytes of noise) that do not
    decode; and the count of the good packets."""
    data = encoded_audio(tone(16000, seconds), "adts", "aac", 16000)
    with av.open(io.BytesIO(data)) as written:
        good = sum(1 for packet in written.demux() if packet.size)
    header = bytearray(data[:7])
    header[4], header[5] = 9 >> 3, (header[5] & 0x1F) | (9 & 7) << 5  # frame_length 9 (header[3]'s bits are 0)
    assert header[3] & 3 == 0
    return data + (bytes(header) + b"\xde\xad") * bad_packets, good


@pytest.mark.parametrize("seconds", [2, 10], ids=["share-of-packets", "in-a-row"])
def test_a_file_mostly_of_packets_that_do_not_decode_is_refused_soon(seconds: float) -> None:
    """Without a limit, all 20,000 bad packets were skipped and the tone decoded; a 24 MB file of
    them held a worker thread for 50 s."""
    data, good = adts_then_bad_packets(seconds, 20000)
    with pytest.raises(NotAudioError, match="audio packets do not decode") as refused:
        decoded(AudioFile.open(data, HOUR))
    match = re.search(r"(\d+) of its first (\d+)", str(refused.value))
    assert match, refused.value
    bad, read = int(match[1]), int(match[2])
    assert bad <= MAX_BAD_PACKETS_IN_A_ROW + 1 and read <= good + MAX_BAD_PACKETS_IN_A_ROW + 1, (bad, read, good)


def test_a_few_packets_that_do_not_decode_are_skipped() -> None:
    data, _ = adts_then_bad_packets(2, MAX_BAD_PACKETS_IN_A_ROW // 2)
    assert decoded(AudioFile.open(data, HOUR)).size >= 2 * SAMPLE_RATE


def test_close_drops_the_decoded_audio_not_handed_on() -> None:
    audio_file = AudioFile.open(u8_wav(tone(8000, 10), 8000), HOUR)
    chunks = audio_file.chunks()
    next(chunks)
    pending = [weakref.ref(array) for array in audio_file._pending]
    assert pending, "decoded audio waits for the next chunk"
    audio_file.close()
    assert all(ref() is None for ref in pending), "close() frees it while the AudioFile is still referenced"


def test_close_while_another_thread_decodes_leaves_the_closing_to_that_thread() -> None:
    """A handler ending at shutdown closes the file while a worker thread decodes a chunk: without
    the closing left to the thread, close() raised "generator already executing" (or closed FFmpeg
    under the thread)."""
    audio_file = AudioFile.open(u8_wav(tone(8000, 10), 8000), HOUR)
    frames = audio_file._frames
    decoding, release = threading.Event(), threading.Event()

    def gated_frames() -> Iterator[av.AudioFrame]:
        decoding.set()
        release.wait(10)
        yield from frames

    audio_file._frames = gated_frames()
    chunks = audio_file.chunks()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(next, chunks, None)
        assert decoding.wait(10)
        audio_file.close()
        assert not first.done(), "the chunk being decoded is not interrupted"
        release.set()
        assert first.result(10) is None, "the thread stops after its chunk"
    assert not audio_file._pending, "and closes the file"
    with pytest.raises(StopIteration):
        next(chunks)


def test_a_playlist_naming_a_file_on_the_daemons_disk_is_refused_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ffconcat playlist naming a path relative to the daemon's working directory: FFmpeg read and
    transcribed that file, the daemon's own, as if uploaded (an abuse probe found it)."""
    monkeypatch.chdir(tmp_path)
    with open("on_the_daemons_disk.wav", "wb") as own:
        own.write(u8_wav(tone(16000, 1), 16000))
    playlist = b"ffconcat version 1.0\nfile on_the_daemons_disk.wav\n"
    with av.open(io.BytesIO(playlist), mode="r") as unguarded:  # what FFmpeg does with it by default
        assert unguarded.format.name == "concat" and unguarded.streams.audio, "the playlist opens the file"
    with pytest.raises(NotAudioError, match="not an audio file FFmpeg can read"):
        AudioFile.open(playlist, HOUR)
