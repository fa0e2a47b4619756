"""PCM decoding, resampling and the session audio buffer."""

from __future__ import annotations

import numpy as np
import pytest

from satellite_asr.audio import AudioBuffer, AudioFormatError, PcmDecoder, to_pcm16


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def test_s16le_and_f32le_decode_to_the_same_samples() -> None:
    values = np.array([0, 16384, -16384, 32767, -32768], dtype="<i2")
    from_int = PcmDecoder("s16le").decode(values.tobytes()).samples
    from_float = PcmDecoder("f32le").decode((values / 32768.0).astype("<f4").tobytes()).samples
    np.testing.assert_allclose(from_int, from_float, atol=1e-6)
    assert from_int.dtype == np.float32


def test_pcm16_gives_back_every_16_bit_sample_read_as_float() -> None:
    """Every int16 value through the s16le decoder and back: the same bytes, in float32 and float64."""
    values = np.arange(-32768, 32768, dtype="<i2")
    decoded = PcmDecoder("s16le").decode(values.tobytes()).samples
    assert to_pcm16(decoded).tobytes() == values.tobytes()
    assert to_pcm16(values / 32768.0).tobytes() == values.tobytes()


def test_pcm16_clips_beyond_full_scale_and_writes_little_endian_int16() -> None:
    pcm = to_pcm16(np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5], dtype=np.float32))
    assert pcm.dtype == np.dtype("<i2")
    assert pcm.tolist() == [-32768, -32768, -16384, 0, 16384, 32767, 32767]
    assert pcm.tobytes() == b"\x00\x80\x00\x80\x00\xc0\x00\x00\x00\x40\xff\x7f\xff\x7f"
    assert len(to_pcm16(np.zeros(321, dtype=np.float32)).tobytes()) == 642


@pytest.mark.parametrize("encoding", ["pcmu", "pcma"])
def test_g711_decodes_like_the_standard_library_reference(encoding: str) -> None:
    """Every one of the 256 codes against Python's own G.711 tables (audioop, in Python <= 3.12)."""
    audioop = pytest.importorskip("audioop")
    reference = {"pcmu": audioop.ulaw2lin, "pcma": audioop.alaw2lin}[encoding]
    codes = bytes(range(256))
    expected = np.frombuffer(reference(codes, 2), dtype="<i2") / 32768.0
    np.testing.assert_array_equal(PcmDecoder(encoding, 16000).decode(codes).samples, expected.astype(np.float32))


def test_g711_keeps_a_tone_through_the_8_khz_resampling() -> None:
    audioop = pytest.importorskip("audioop")
    t = np.arange(8000) / 8000
    linear = (0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2").tobytes()
    for encoding, encode in (("pcmu", audioop.lin2ulaw), ("pcma", audioop.lin2alaw)):
        decoder = PcmDecoder(encoding, 8000)
        out = np.concatenate([decoder.decode(encode(linear, 2)).samples, decoder.flush()])
        assert abs(out.size - 16000) <= 2
        assert abs(dominant_frequency(out, 16000) - 440.0) < 2.0


def test_partial_frames_are_rejected_with_a_reason() -> None:
    with pytest.raises(AudioFormatError, match="not a whole number of f32le frames"):
        PcmDecoder("f32le").decode(b"\x00" * 6)
    with pytest.raises(AudioFormatError, match="s16le"):
        PcmDecoder("s16le", channels=2).decode(b"\x00" * 6)


def test_bad_formats_are_refused() -> None:
    with pytest.raises(AudioFormatError, match="encoding"):
        PcmDecoder("mp3")
    with pytest.raises(AudioFormatError, match="outside 8000-48000"):
        PcmDecoder("s16le", 96000)


def test_non_finite_samples_become_silence_and_are_counted() -> None:
    raw = np.array([0.5, np.nan, np.inf, -np.inf, -0.5, 3.0], dtype="<f4").tobytes()
    decoded = PcmDecoder("f32le").decode(raw)
    assert decoded.non_finite == 3
    np.testing.assert_array_equal(decoded.samples, np.array([0.5, 0, 0, 0, -0.5, 1.0], dtype=np.float32))


def test_stereo_is_mixed_down() -> None:
    frames = np.array([[1000, 3000], [-2000, 0]], dtype="<i2")
    decoded = PcmDecoder("s16le", channels=2).decode(frames.tobytes()).samples
    np.testing.assert_allclose(decoded, np.array([2000, -1000]) / 32768.0, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency_and_duration_across_frames(rate: int) -> None:
    seconds, tone = 2.0, 440.0
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * tone * t)).astype("<f4").tobytes()
    decoder = PcmDecoder("f32le", rate)
    frame = int(rate * 0.1) * 4 + 4  # frames that do not line up with the resampling ratio
    pieces = [decoder.decode(pcm[i : i + frame]).samples for i in range(0, len(pcm), frame)]
    out = np.concatenate([*pieces, decoder.flush()])
    assert abs(out.size - 16000 * seconds) <= 2
    assert abs(dominant_frequency(out, 16000) - tone) < 2.0


def test_audio_buffer_addresses_samples_absolutely() -> None:
    buffer = AudioBuffer()
    for start in range(0, 40000, 1000):
        buffer.append(np.arange(start, start + 1000, dtype=np.float32))
    assert buffer.end == 40000
    np.testing.assert_array_equal(buffer.slice(100, 105), np.arange(100, 105, dtype=np.float32))
    buffer.drop_before(30000)
    assert buffer.base == 30000
    np.testing.assert_array_equal(buffer.slice(29990, 30003), np.arange(30000, 30003, dtype=np.float32))
    buffer.append(np.array([7.0], dtype=np.float32))
    assert buffer.end == 40001 and buffer.slice(40000, 50000).tolist() == [7.0]
