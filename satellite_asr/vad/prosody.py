"""Where the voice's pitch was heading as it stopped: a statement ends low, a speaker who stops to think holds it.

At a pause the text may read as finished while the speaker is not ("Play the next chapter on." for
"play the next chapter of | my audiobook"). How the voice ended says more: a finished statement
ends with its pitch falling to the bottom of the speaker's range ("final lowering"), a speaker
holding the turn stops within it. `final_pitch` measures that: where the voice's last voiced
frames were heading (their pitch, carried on 100 ms at the rate they were falling or rising)
against the lower quartile of the utterance so far, in semitones. The quartile, not the median,
because voices differ in how wide they range: ending under its own usual lows is what a finished
statement does in a narrow voice and in a wide one. The heading, not only the last pitch, because
a statement may stop in the middle of its fall: one still falling fast has not reached its low yet.

Pitch by YIN (de Cheveigné and Kawahara, 2002) on 40 ms frames every 10 ms, written here with numpy:
none of the project's libraries tracks pitch, and this needs only its normalised difference function.
"""

from __future__ import annotations

import numpy as np

from satellite_asr.audio import SAMPLE_RATE, Audio

FRAME = SAMPLE_RATE * 40 // 1000
"""Samples per analysis frame (40 ms: the longest lag plus the compared window)."""
HOP = SAMPLE_RATE * 10 // 1000
"""Samples between frames (10 ms)."""
LOWEST_HZ, HIGHEST_HZ = 70.0, 400.0
"""The pitch range tracked: most speaking voices, children's highs included. A voice that drops
into creak under 70 Hz at its end is not seen falling there: it waits the long silence."""
LONGEST_LAG = int(SAMPLE_RATE / LOWEST_HZ)
SHORTEST_LAG = int(SAMPLE_RATE / HIGHEST_HZ)
WINDOW = FRAME - LONGEST_LAG
"""Samples compared at every lag, the same for all lags."""
PERIODIC = 0.2
"""YIN's threshold: a frame whose normalised difference dips below this at some lag is voiced."""
LOUD_ENOUGH = 0.15
"""A voiced frame's RMS must be at least this share of the utterance's loud frames' (its 90th
percentile; about -16 dB): quieter frames are breath, noise, hum or the decay of the last sound."""
LAST_FRAMES = 5
"""The voice's end: its last five voiced frames (their centres 40 ms apart, over 80 ms of audio)."""
TREND_FRAMES = 10
"""The voice's direction at its end: the median slope between pairs of its last ten voiced frames
(Theil-Sen: a frame or three the tracker got wrong do not turn it)."""
HEADING_FRAMES = 10
"""How far on the direction is carried: 10 frames, 100 ms."""
FEWEST_FRAMES = 10
"""Fewer voiced frames than this (a cough, a single syllable in noise): no measure."""
OCTAVE_SLIP = 9.0
"""A voice's last frames this many semitones or more under the five before them: the tracker took
two periods for one (a creaky or breathy end), not a fall; no measure. Real falls are gradual: on
the evaluation set's splits dev to fresh6 the last five frames sat at most 5.6 semitones under the
five before."""
ANALYSED_SECONDS = 4.0
"""Only the utterance's last seconds are analysed: enough for the speaker's range, and the cost
of a long utterance stays that of a short one."""


def final_pitch(samples: Audio) -> float | None:
    """Semitones from the utterance's lower-quartile pitch to where its voice was heading as it
    stopped (negative: under it).

    None when too little of it is voiced to say.
    """
    samples = np.asarray(samples[-int(ANALYSED_SECONDS * SAMPLE_RATE) :], dtype=np.float64)
    if samples.size < FRAME + HOP:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME)[::HOP]
    pitches = _yin(frames)
    loudness = np.sqrt(np.mean(frames * frames, axis=1))  # RMS per frame
    voiced = (pitches > 0) & (loudness > LOUD_ENOUGH * np.percentile(loudness, 90))
    if np.count_nonzero(voiced) < FEWEST_FRAMES:
        return None
    semitones = 12 * np.log2(pitches[voiced])
    ending = float(np.median(semitones[-LAST_FRAMES:]))
    if float(np.median(semitones[-2 * LAST_FRAMES : -LAST_FRAMES])) - ending >= OCTAVE_SLIP:
        return None
    heading = ending + HEADING_FRAMES * _trend(np.flatnonzero(voiced)[-TREND_FRAMES:], semitones[-TREND_FRAMES:])
    return heading - float(np.percentile(semitones, 25))


def _trend(positions: np.ndarray, semitones: np.ndarray) -> float:
    """Semitones per frame: the median of the slopes between every pair of frames (Theil-Sen)."""
    later, earlier = np.triu_indices(len(positions), k=1)[::-1]
    return float(np.median((semitones[later] - semitones[earlier]) / (positions[later] - positions[earlier])))


def _yin(frames: np.ndarray) -> np.ndarray:
    """The pitch of each frame in Hz, 0 where it is not periodic."""
    size = 1 << (FRAME - 1).bit_length()  # lag + WINDOW never passes FRAME: no wrap-around
    head = np.fft.rfft(frames[:, :WINDOW], size)
    whole = np.fft.rfft(frames, size)
    cross = np.fft.irfft(np.conj(head) * whole, size)[:, : LONGEST_LAG + 1]
    squares = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames * frames, axis=1)], axis=1)
    lags = np.arange(LONGEST_LAG + 1)
    shifted_energy = squares[:, lags + WINDOW] - squares[:, lags]
    difference = squares[:, [WINDOW]] + shifted_energy - 2 * cross
    difference[:, 0] = 0
    running = np.cumsum(difference[:, 1:], axis=1)
    normalised = np.ones_like(difference)
    normalised[:, 1:] = difference[:, 1:] * lags[1:] / np.maximum(running, 1e-12)
    searched = normalised[:, SHORTEST_LAG:LONGEST_LAG]
    periodic = searched < PERIODIC
    first = np.argmax(periodic, axis=1)
    # from the first lag under the threshold, on down to the bottom of that dip
    rising = np.diff(searched, axis=1) >= 0
    rising[np.arange(searched.shape[1] - 1) < first[:, None]] = False
    rising[:, -1] = True
    bottom = np.argmax(rising, axis=1)
    return np.where(periodic.any(axis=1), SAMPLE_RATE / (SHORTEST_LAG + bottom), 0.0)
