"""Endpointing rules driven by synthetic speech probabilities (no audio, no model)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from satellite_asr.config import Settings
from satellite_asr.vad.endpointer import (
    WINDOW,
    Endpoint,
    Endpointer,
    EndpointerConfig,
    EndpointEvent,
    PartialDue,
    SpeechPaused,
    SpeechStart,
    ms_to_samples,
    silence_samples,
)
from satellite_asr.vad.turn import TurnVerdict

ADAPTIVE = EndpointerConfig(
    threshold=0.5,
    min_speech_ms=300,
    turn_detection="adaptive",
    min_silence_ms=200,
    silence_ms=800,
    speech_pad_ms=300,
    partial_interval_ms=500,
    max_utterance_s=30,
)
"""The documented defaults, written out so that a changed default is a deliberate change here too."""
CONFIG = dataclasses.replace(ADAPTIVE, turn_detection="fixed")
"""Fixed endpointing: every utterance waits `silence_ms` (most rules are the same in both modes)."""


def windows(ms: float) -> int:
    """Silences are counted in whole windows, the nearest number to the milliseconds asked (32 ms each)."""
    return max(1, math.floor(ms / 32 + 0.5))


def run(endpointer: Endpointer, probabilities: list[float]) -> list[tuple[int, EndpointEvent]]:
    """Events with the index of the window that produced them."""
    out: list[tuple[int, EndpointEvent]] = []
    for index, p in enumerate(probabilities):
        out.extend((index, event) for event in endpointer.process(p))
    return out


def of_type(events: list[tuple[int, EndpointEvent]], kind: type) -> list[tuple[int, EndpointEvent]]:
    return [(i, e) for i, e in events if isinstance(e, kind)]


def test_silence_gives_no_events() -> None:
    assert run(Endpointer(CONFIG), [0.01] * 500) == []


def test_speech_starts_after_min_speech_with_preroll() -> None:
    lead = 40
    events = run(Endpointer(CONFIG), [0.0] * lead + [0.9] * 30)
    starts = of_type(events, SpeechStart)
    assert len(starts) == 1
    index, start = starts[0]
    speech_windows = math.ceil(ms_to_samples(300) / WINDOW)  # speech is counted up to min_speech_ms
    assert index == lead + speech_windows - 1, "start is reported on the window that completes min_speech_ms"
    assert isinstance(start, SpeechStart)
    assert start.start == lead * WINDOW - ms_to_samples(300), "pre-roll of speech_pad_ms before the onset"


def test_preroll_is_clamped_to_the_stream_start() -> None:
    events = run(Endpointer(CONFIG), [0.9] * 20)
    assert [e for _, e in of_type(events, SpeechStart)] == [SpeechStart(0)]


def test_short_blip_is_not_speech() -> None:
    blip = [0.0] * 10 + [0.9] * (windows(300) - 2) + [0.0] * 50
    assert of_type(run(Endpointer(CONFIG), blip), SpeechStart) == []


def test_endpoint_after_silence_ms_with_trailing_pad() -> None:
    speech = 40
    events = run(Endpointer(CONFIG), [0.9] * speech + [0.0] * 60)
    ends = of_type(events, Endpoint)
    assert len(ends) == 1
    index, end = ends[0]
    assert isinstance(end, Endpoint)
    assert index == speech + windows(800) - 1
    assert not end.forced
    assert end.end == speech * WINDOW + CONFIG.trailing_pad_samples


def test_speculation_point_comes_once_before_the_endpoint() -> None:
    events = run(Endpointer(CONFIG), [0.9] * 40 + [0.0] * 60)
    paused = of_type(events, SpeechPaused)
    ((end_index, end),) = of_type(events, Endpoint)
    assert len(paused) == 1
    pause_index, pause = paused[0]
    assert isinstance(pause, SpeechPaused) and isinstance(end, Endpoint)
    assert pause_index < end_index
    assert pause.end == end.end, "the speculative decode covers exactly the audio the final will use"


def test_resumed_speech_cancels_the_endpoint_and_pauses_again() -> None:
    gap = windows(500)  # shorter than silence_ms, longer than the speculation point
    events = run(Endpointer(CONFIG), [0.9] * 30 + [0.0] * gap + [0.9] * 30 + [0.0] * 60)
    assert len(of_type(events, SpeechStart)) == 1
    assert len(of_type(events, SpeechPaused)) == 2
    assert len(of_type(events, Endpoint)) == 1


def test_silence_is_below_threshold_and_short_dips_do_not_end_speech() -> None:
    dip = windows(300)
    events = run(Endpointer(CONFIG), [0.9] * 20 + [0.4] * dip + [0.9] * 20 + [0.49] * 60)
    ((_, end),) = of_type(events, Endpoint)
    assert isinstance(end, Endpoint)
    assert end.end == (40 + dip) * WINDOW + CONFIG.trailing_pad_samples, "0.49 is below 0.5: silence"
    assert len(of_type(events, SpeechStart)) == 1


def test_onset_survives_flicker_but_not_gaps() -> None:
    flicker = [0.0] * 10 + [0.9, 0.9, 0.2, 0.9, 0.1, 0.9, 0.9, 0.3] * 3
    ((_, start),) = of_type(run(Endpointer(CONFIG), flicker), SpeechStart)
    assert isinstance(start, SpeechStart)
    assert start.start == 10 * WINDOW - ms_to_samples(300), "the start stays at the first speech window"
    gappy = [0.0] * 10 + ([0.9] * 4 + [0.1] * 4) * 10
    assert of_type(run(Endpointer(CONFIG), gappy), SpeechStart) == []


def test_partials_are_due_every_interval_of_speech() -> None:
    speech_windows = windows(5000)
    events = run(Endpointer(CONFIG), [0.9] * speech_windows + [0.0] * 60)
    partials = of_type(events, PartialDue)
    assert len(partials) in (9, 10)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(partials)]
    assert all(g == windows(500) or g == windows(500) - 1 for g in gaps)


def test_no_partials_during_silence() -> None:
    events = run(Endpointer(CONFIG), [0.9] * 20 + [0.0] * 25 + [0.9] * 1 + [0.0] * 60)
    speech_end = 20
    late = [i for i, _ in of_type(events, PartialDue) if speech_end <= i < 45]
    assert late == []


def test_length_cap_forces_a_final_and_speech_goes_on_in_a_new_utterance() -> None:
    config = dataclasses.replace(CONFIG, max_utterance_s=3.0, speech_pad_ms=0)
    endpointer = Endpointer(config)
    events = run(endpointer, [0.9] * windows(7000))
    ends = [e for _, e in of_type(events, Endpoint)]
    starts = [e for _, e in of_type(events, SpeechStart)]
    assert all(isinstance(e, Endpoint) and e.forced for e in ends)
    assert len(ends) == 2 and len(starts) == 3
    for end, next_start in zip(ends, starts[1:], strict=False):
        assert isinstance(end, Endpoint) and isinstance(next_start, SpeechStart)
        assert next_start.start >= end.end, "utterances never overlap"
    first = starts[0]
    assert isinstance(first, SpeechStart)
    assert ends[0].end - first.start >= 3 * 16000  # type: ignore[union-attr]


def test_next_utterance_preroll_never_reaches_into_the_previous_one() -> None:
    events = run(Endpointer(CONFIG), [0.9] * 20 + [0.0] * windows(800) + [0.9] * 20 + [0.0] * 60)
    ends = [e for _, e in of_type(events, Endpoint)]
    starts = [e for _, e in of_type(events, SpeechStart)]
    assert len(starts) == 2
    assert isinstance(starts[1], SpeechStart) and isinstance(ends[0], Endpoint)
    assert starts[1].start >= ends[0].end


def test_flush_ends_speech_in_progress_and_is_a_no_op_otherwise() -> None:
    endpointer = Endpointer(CONFIG)
    assert endpointer.flush() == []
    run(endpointer, [0.9] * 20)
    flushed = endpointer.flush(end=20 * WINDOW + 100)
    assert flushed == [Endpoint(20 * WINDOW + 100, "forced")]
    assert endpointer.flush() == []
    assert not endpointer.in_speech


def test_flush_turns_a_word_the_stream_ended_on_into_an_utterance_but_not_a_click() -> None:
    """The client said the command is over: a short last word ("no") is one, though it never
    lasted `min_speech_ms`."""
    word = Endpointer(CONFIG)
    run(word, [0.0] * 20 + [0.9] * 5)
    assert word.flush() == [SpeechStart(20 * WINDOW - ms_to_samples(300)), Endpoint(25 * WINDOW, "forced")]
    click = Endpointer(CONFIG)
    run(click, [0.0] * 20 + [0.9] * 4)
    assert click.flush() == []
    assert not click.in_speech and click.flush() == []


def test_a_flush_leaves_speech_too_short_to_be_a_word_going_on() -> None:
    """A client that flushes every 100 ms (3 windows): each flush comes before the speech has
    lasted 160 ms; were it thrown away, no word would ever become an utterance."""
    endpointer = Endpointer(CONFIG)
    run(endpointer, [0.0] * 20)
    events: list[EndpointEvent] = []
    for _ in range(4):
        run(endpointer, [0.9] * 3)
        events.extend(endpointer.flush())
    assert events[0] == SpeechStart(20 * WINDOW - ms_to_samples(300))
    assert events[1] == Endpoint(26 * WINDOW, "forced")


def test_a_clear_forgets_speech_not_yet_confirmed() -> None:
    """The client discarded its audio: an utterance that follows starts at its own speech."""
    endpointer = Endpointer(CONFIG)
    run(endpointer, [0.0] * 20 + [0.9] * 3)
    endpointer.clear()
    starts = of_type(run(endpointer, [0.9] * 10), SpeechStart)
    assert [event for _, event in starts] == [SpeechStart(23 * WINDOW - ms_to_samples(300))]


def test_an_onset_that_died_on_a_dip_gives_its_start_to_the_next_one() -> None:
    """ "Stop playing music": "stop" is shorter than `min_speech_ms` and a dip of more than 100 ms
    follows it; the onset that then confirms speech starts back at "stop", or the pre-roll of 300 ms
    from the later onset would leave the word out."""
    first_word = [0.0] * 40 + [0.9] * 5 + [0.0] * 4
    starts = of_type(run(Endpointer(CONFIG), first_word + [0.9] * 20), SpeechStart)
    assert [e for _, e in starts] == [SpeechStart(40 * WINDOW - ms_to_samples(300))]
    too_far = of_type(run(Endpointer(CONFIG), first_word + [0.0] * windows(500) + [0.9] * 20), SpeechStart)
    assert [e for _, e in too_far] == [SpeechStart((49 + windows(500)) * WINDOW - ms_to_samples(300))]


def test_a_chain_of_blips_reaches_back_at_most_the_lookback() -> None:
    blips = [0.0] * 10 + ([0.9] * 2 + [0.0] * 4) * 40
    endpointer = Endpointer(CONFIG)
    events = run(endpointer, blips + [0.9] * 20)
    ((_, start),) = of_type(events, SpeechStart)
    onset = len(blips) * WINDOW
    assert isinstance(start, SpeechStart)
    assert start.start == onset - ms_to_samples(1500) - ms_to_samples(300)


def test_earliest_start_keeps_the_audio_a_slow_onset_will_start_from() -> None:
    """A session drops audio before `earliest_start`: an onset that takes `min_speech_ms` of 3 s to
    confirm still starts at its first speech less the pre-roll."""
    slow = Endpointer(dataclasses.replace(CONFIG, min_speech_ms=3000))
    assert slow.earliest_start == 0
    run(slow, [0.0] * 100)
    assert slow.earliest_start == 100 * WINDOW - ms_to_samples(300)
    for _ in range(80):
        run(slow, [0.9])
        assert slow.earliest_start == 100 * WINDOW - ms_to_samples(300)
    ((_, start),) = of_type(run(slow, [0.9] * 20), SpeechStart)
    assert start == SpeechStart(100 * WINDOW - ms_to_samples(300))


def test_defaults_are_the_settings() -> None:
    assert EndpointerConfig.from_settings(Settings()) == ADAPTIVE


def paused(config: EndpointerConfig, speech: int = 40) -> tuple[Endpointer, int]:
    """An endpointer that heard `speech` windows and then silence up to its speculation point."""
    endpointer = Endpointer(config)
    events = run(endpointer, [0.9] * speech)
    while not any(isinstance(e, SpeechPaused) for _, e in events):
        events = run(endpointer, [0.0])
    ((_, pause),) = of_type(events, SpeechPaused)
    assert isinstance(pause, SpeechPaused)
    return endpointer, pause.end


@pytest.mark.parametrize(
    ("ms", "waited"), [(200, 6), (100, 3), (800, 25), (250, 8), (64, 2), (10, 1), (208, 7), (240, 8)]
)
def test_a_silence_is_the_nearest_whole_number_of_windows(ms: int, waited: int) -> None:
    assert silence_samples(ms) == waited * WINDOW, "200 ms is 6 windows (192 ms), not 7 (224 ms)"


def test_adaptive_speculates_at_half_the_short_silence() -> None:
    endpointer, end = paused(ADAPTIVE)
    assert endpointer.position - 40 * WINDOW == windows(100) * WINDOW
    assert end == 40 * WINDOW + ADAPTIVE.trailing_pad_samples


def test_complete_verdict_ends_the_utterance_at_the_short_silence() -> None:
    endpointer, end = paused(ADAPTIVE)
    assert endpointer.verdict(end, TurnVerdict.COMPLETE) == [], "not yet: 200 ms have not passed"
    events = run(endpointer, [0.0] * windows(800))
    ((index, endpoint),) = of_type(events, Endpoint)
    assert endpoint == Endpoint(end, "complete", windows(200) * WINDOW)
    assert index == windows(200) - windows(100) - 1, "on the window that completes min_silence_ms"


def test_a_verdict_after_the_short_silence_ends_the_utterance_at_once() -> None:
    endpointer, end = paused(ADAPTIVE)
    assert of_type(run(endpointer, [0.0] * windows(300)), Endpoint) == []
    (endpoint,) = endpointer.verdict(end, TurnVerdict.COMPLETE)
    assert endpoint == Endpoint(end, "complete", windows(100) * WINDOW + windows(300) * WINDOW)
    assert not endpointer.in_speech


@pytest.mark.parametrize("verdict", [TurnVerdict.INCOMPLETE, TurnVerdict.UNSURE])
def test_other_verdicts_wait_the_long_silence_and_speculate_again_on_fixeds_audio(verdict: TurnVerdict) -> None:
    endpointer, end = paused(ADAPTIVE)
    assert endpointer.verdict(end, verdict) == []
    events = run(endpointer, [0.0] * windows(800))
    ((index, second),) = of_type(events, SpeechPaused)
    ((_, endpoint),) = of_type(events, Endpoint)
    # the second speculation ends where fixed endpointing's only one does: more trailing audio
    _, fixed_end = paused(CONFIG)
    assert second == SpeechPaused(fixed_end, read_turn=False) and fixed_end > end
    assert index == windows(800 / 3) - windows(100) - 1, "at a third of the long silence"
    assert endpoint == Endpoint(fixed_end, "silence", windows(800) * WINDOW)
    assert endpointer.verdict(fixed_end, TurnVerdict.COMPLETE) == [], "only the first speculation is judged"


def test_a_late_verdict_asks_for_the_second_speculation_at_once() -> None:
    endpointer, end = paused(ADAPTIVE)
    assert of_type(run(endpointer, [0.0] * windows(400)), SpeechPaused) == [], "none before a verdict"
    (second,) = endpointer.verdict(end, TurnVerdict.UNSURE)
    assert isinstance(second, SpeechPaused) and second.end > end
    ((_, endpoint),) = of_type(run(endpointer, [0.0] * windows(800)), Endpoint)
    assert endpoint.end == second.end and endpoint.reason == "silence"


@pytest.mark.parametrize("verdict", [None, TurnVerdict.UNSURE])
def test_a_long_wait_ends_where_it_would_have_however_late_the_verdict(verdict: TurnVerdict | None) -> None:
    """The final's audio does not depend on how fast the speculative decode was (or on framing)."""
    _, fixed_end = paused(CONFIG)
    endpointer, end = paused(ADAPTIVE)
    events = run(endpointer, [0.0] * (windows(800) - windows(100) - 1))
    assert of_type(events, Endpoint) == [] and of_type(events, SpeechPaused) == []
    if verdict is not None:  # the verdict comes on the last window of silence
        endpointer.verdict(end, verdict)
    ((_, endpoint),) = of_type(run(endpointer, [0.0]), Endpoint)
    assert endpoint == Endpoint(fixed_end, "silence", windows(800) * WINDOW)


def test_speech_resuming_inside_the_short_wait_goes_on_and_forgets_the_verdict() -> None:
    endpointer, end = paused(ADAPTIVE)
    endpointer.verdict(end, TurnVerdict.COMPLETE)
    events = run(endpointer, [0.0] + [0.9] * 20 + [0.0] * windows(500))
    assert of_type(events, SpeechStart) == []
    assert of_type(events, Endpoint) == [], "the second pause has no verdict yet: it waits the long silence"
    assert endpointer.in_speech


def test_a_verdict_on_an_earlier_pause_is_ignored() -> None:
    endpointer, end = paused(ADAPTIVE)
    run(endpointer, [0.9] * 10 + [0.0] * windows(300))
    assert endpointer.verdict(end, TurnVerdict.COMPLETE) == []
    assert endpointer.in_speech


def test_fixed_endpointing_ignores_verdicts() -> None:
    endpointer, end = paused(CONFIG)
    assert endpointer.verdict(end, TurnVerdict.COMPLETE) == []
    ((_, endpoint),) = of_type(run(endpointer, [0.0] * windows(800)), Endpoint)
    assert endpoint == Endpoint(end, "silence", windows(800) * WINDOW)


def test_manual_endpointing_ends_only_at_flush_or_the_length_cap() -> None:
    manual = dataclasses.replace(CONFIG, turn_detection="manual", max_utterance_s=10.0)
    endpointer = Endpointer(manual)
    events = run(endpointer, [0.9] * 20 + [0.0] * windows(5000) + [0.9] * 20)
    assert len(of_type(events, SpeechStart)) == 1
    assert of_type(events, Endpoint) == [] and of_type(events, SpeechPaused) == []
    assert endpointer.in_speech
    assert endpointer.flush() == [Endpoint(endpointer.position, "forced")]
    capped = run(Endpointer(manual), [0.9] * 20 + [0.0] * windows(11000))
    assert [e.reason for _, e in of_type(capped, Endpoint)] == ["forced"]  # type: ignore[union-attr]


def test_a_complete_verdict_is_reported_as_such_when_both_silences_round_alike() -> None:
    alike = dataclasses.replace(ADAPTIVE, min_silence_ms=790, silence_ms=800)
    endpointer, end = paused(alike)
    endpointer.verdict(end, TurnVerdict.COMPLETE)
    ((_, endpoint),) = of_type(run(endpointer, [0.0] * windows(800)), Endpoint)
    assert endpoint.reason == "complete"
