"""Where the voice's pitch was heading as it stopped: synthetic voices of known pitch, and the
evaluation set's voices."""

from __future__ import annotations

import numpy as np
import pytest

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.clients.wav import read_wav
from satellite_asr.vad.prosody import _trend, final_pitch
from satellite_asr.vad.turn import FALLEN_SEMITONES
from tests.eval_turns import MANIFEST, TURNS, utterance_start


def voice(pitch_hz: np.ndarray, seed: int = 0) -> Audio:
    """A buzz with the harmonics of a voice whose pitch follows `pitch_hz` (one value per sample),
    in a little white noise."""
    phase = 2 * np.pi * np.cumsum(pitch_hz) / SAMPLE_RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 8))
    noise = np.random.default_rng(seed).normal(0, 0.01, pitch_hz.size)
    return (0.2 * buzz / np.max(np.abs(buzz)) + noise).astype(np.float32)


def seconds(s: float) -> int:
    return int(s * SAMPLE_RATE)


def test_a_voice_that_falls_an_octave_over_its_last_syllable_ends_twelve_semitones_down() -> None:
    fall = 200.0 * 2 ** (np.linspace(0, -12, seconds(0.3)) / 12)
    pitch = np.concatenate([np.full(seconds(1.2), 200.0), fall, np.full(seconds(0.1), 100.0)])
    assert final_pitch(voice(pitch)) == pytest.approx(-12.0, abs=0.5)


def test_a_step_down_of_a_few_semitones_is_measured() -> None:
    pitch = np.concatenate([np.full(seconds(1.2), 200.0), np.full(seconds(0.3), 150.0)])
    assert final_pitch(voice(pitch)) == pytest.approx(12 * np.log2(150 / 200), abs=0.3)


def test_an_octave_slip_at_the_end_is_no_measure() -> None:
    """A jump of an octave from one frame to the next is the tracker taking two periods for one (a
    creaky end), not a voice falling: it must not end a turn."""
    pitch = np.concatenate([np.full(seconds(1.2), 200.0), np.full(seconds(0.1), 100.0)])
    assert final_pitch(voice(pitch)) is None


@pytest.mark.parametrize("hz", [90.0, 150.0, 320.0])
def test_a_level_voice_ends_where_it_always_was(hz: float) -> None:
    assert final_pitch(voice(np.full(seconds(1.5), hz))) == pytest.approx(0.0, abs=0.3)


def test_a_statement_falling_at_its_end_is_under_the_line_a_rising_one_above() -> None:
    level = np.full(seconds(1.2), 160.0)
    fall = 160.0 * 2 ** (np.linspace(0, -5, seconds(0.25)) / 12)
    rise = 160.0 * 2 ** (np.linspace(0, 4, seconds(0.25)) / 12)
    fell = final_pitch(voice(np.concatenate([level, fall])))
    rose = final_pitch(voice(np.concatenate([level, rise])))
    assert fell is not None and fell <= FALLEN_SEMITONES
    assert rose is not None and rose > 2.0


def test_a_voice_that_stops_mid_fall_is_heading_lower_than_one_that_reached_the_same_pitch() -> None:
    """Both stop two semitones down; the one still falling (about 1.7 semitones per 100 ms) was
    heading on down and ended its statement, the one that got there and held was not."""
    level = np.full(seconds(1.2), 160.0)
    fall = 160.0 * 2 ** (np.linspace(0, -2, seconds(0.12)) / 12)
    held = np.full(seconds(0.2), fall[-1])
    falling = final_pitch(voice(np.concatenate([level, fall])))
    holding = final_pitch(voice(np.concatenate([level, fall, held])))
    assert falling is not None and holding is not None
    assert falling <= FALLEN_SEMITONES < holding


def test_the_silence_after_the_voice_does_not_count() -> None:
    pitch = np.concatenate([np.full(seconds(1.2), 200.0), np.full(seconds(0.3), 150.0)])
    spoken = voice(pitch)
    quiet = np.random.default_rng(1).normal(0, 0.002, seconds(0.3)).astype(np.float32)
    assert final_pitch(np.concatenate([spoken, quiet])) == pytest.approx(final_pitch(spoken), abs=0.1)


def test_a_quiet_hum_after_the_voice_is_not_the_voice() -> None:
    """Periodic but faint (a fridge, a mains hum at -26 dB): under the loudness gate, so the voice's
    own end is what counts."""
    spoken = voice(np.concatenate([np.full(seconds(1.2), 200.0), np.full(seconds(0.3), 150.0)]))
    hum = 0.05 * voice(np.full(seconds(0.4), 100.0), seed=3)
    assert final_pitch(np.concatenate([spoken, hum])) == pytest.approx(final_pitch(spoken), abs=0.1)


def test_a_voice_near_the_bottom_of_the_range_is_tracked() -> None:
    pitch = np.concatenate([np.full(seconds(1.2), 100.0), np.full(seconds(0.3), 72.0)])
    assert final_pitch(voice(pitch)) == pytest.approx(12 * np.log2(72 / 100), abs=0.4)


@pytest.mark.parametrize(("voiced_s", "measured"), [(0.08, False), (0.09, True)])
def test_a_few_voiced_frames_are_no_measure(voiced_s: float, measured: bool) -> None:
    """Under `FEWEST_FRAMES` voiced frames (a click, a syllable's onset: 80 ms of voice makes 9
    frames of 40 ms every 10 ms) say nothing of a turn; 90 ms make 10."""
    blip = voice(np.full(seconds(voiced_s), 150.0))
    quiet = np.zeros(seconds(0.5), dtype=np.float32)
    assert (final_pitch(np.concatenate([quiet, blip, quiet])) is not None) is measured


@pytest.mark.parametrize(
    "samples",
    [
        np.zeros(seconds(1.0), dtype=np.float32),
        np.random.default_rng(2).normal(0, 0.1, seconds(1.0)).astype(np.float32),
        np.zeros(100, dtype=np.float32),
        np.zeros(0, dtype=np.float32),
    ],
    ids=["silence", "noise", "a few samples", "nothing"],
)
def test_no_voice_no_measure(samples: Audio) -> None:
    assert final_pitch(samples) is None


def test_only_the_last_seconds_are_analysed() -> None:
    """A long utterance costs what a short one does: what came seconds before does not count (a
    low start would pull the lower quartile down, and the end would no longer be under it)."""
    early = voice(np.full(seconds(6.0), 90.0))
    late = voice(np.concatenate([np.full(seconds(3.8), 150.0), np.full(seconds(0.3), 120.0)]))
    assert final_pitch(np.concatenate([early, late])) == pytest.approx(final_pitch(late), abs=0.1)


@pytest.mark.parametrize("name", ["dev_paused_01.wav", "dev_paused_11.wav", "dev_hard_01.wav", "dev_hard_04.wav"])
def test_espeak_voices_hold_their_pitch_at_a_pause_and_drop_it_at_the_end(name: str) -> None:
    entry = MANIFEST[name]
    audio = read_wav(TURNS / name).to_16k_mono()
    start = utterance_start(name)
    at_pause = final_pitch(audio[start : seconds(entry["pause_start_s"] + 0.1)])
    at_end = final_pitch(audio[start : seconds(entry["voice_end_s"] + 0.1)])
    assert at_pause is not None and at_pause > FALLEN_SEMITONES
    assert at_end is not None and at_end <= FALLEN_SEMITONES


def test_a_stray_frame_does_not_turn_the_voices_direction() -> None:
    """One frame the tracker got an octave wrong at the very end (the slip guard looks at five):
    the median of the pairwise slopes stays level, where a least-squares line would fall."""
    positions = np.arange(10)
    semitones = np.zeros(10)
    semitones[-1] = -12.0
    assert _trend(positions, semitones) == pytest.approx(0.0)


def test_the_voices_direction_is_per_frame_of_time_not_per_voiced_frame() -> None:
    """A gap (an unvoiced consonant) between voiced frames is time the pitch took to change."""
    positions = np.array([0, 1, 2, 3, 4, 15, 16, 17, 18, 19])
    assert _trend(positions, -0.1 * positions) == pytest.approx(-0.1)
