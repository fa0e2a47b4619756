"""Endpointing rules as a pure state machine: speech probabilities in, utterance events out.

No I/O and no clock: time is the count of 16 kHz samples fed so far, one Silero window
(`WINDOW` samples) per probability. Every rule can be unit-tested with synthetic probabilities.

Where a command ends is a question of meaning as much as of silence. With `turn_detection`
`adaptive`, the final is decoded early in a pause (`SpeechPaused`) and a `TurnDetector` reads its
text and the voice's final pitch; the session hands the verdict back (`verdict`): a complete command ends after
`min_silence_ms`, anything else waits the full `silence_ms` and is decoded again on the way (a
second speculation, with the trailing audio `fixed` keeps). With `fixed`, every utterance waits
`silence_ms`. With `manual`, silence ends nothing: the client does (`flush`), or the length cap.

One threshold decides speech and silence. Silero's own segmenter keeps speech going down to
`threshold - 0.15`; here that only delays the endpoint (its tail of 0.35-0.5 windows lasts about
100 ms after the voice stops) while the `silence_ms` run already keeps short dips from ending
an utterance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.config import VAD_FIELDS, Settings, check_silences
from satellite_asr.vad.turn import TurnVerdict

WINDOW = 512
"""Samples per Silero window at 16 kHz (32 ms)."""


def ms_to_samples(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


def silence_samples(ms: float) -> int:
    """A silence as the whole number of windows nearest to `ms` (at least one; halves round up).
    Silence is counted window by window: rounding up always would add up to a window (32 ms) to
    every wait."""
    return max(1, math.floor(ms_to_samples(ms) / WINDOW + 0.5)) * WINDOW


ONSET_GAP = ms_to_samples(100)
"""Dips shorter than this do not restart the count of `min_speech_ms`: Silero's probability
flickers inside words (a "wh" or "t"), and restarting would move the start into the word."""
ONSET_REACH = ms_to_samples(500)
"""An onset that begins this soon after one that died (a short first word, "stop", then a dip
longer than `ONSET_GAP`) starts where that one did, so the pre-roll keeps the first word."""
ONSET_LOOKBACK = ms_to_samples(1500)
"""How far before its own first speech an onset may start by `ONSET_REACH`: a chain of blips
cannot drag the start back without end."""
FLUSH_MIN_SPEECH = 5 * WINDOW
"""Speech of an onset not yet confirmed (shorter than `min_speech_ms`) that a flush still turns into
an utterance: a word cut off by the end of the stream (160 ms or more), not a click or the tail of
a sound from a television (as any server that transcribes the whole stream would, Whisper may write
words for such a tail)."""


@dataclass(frozen=True)
class EndpointerConfig:
    """The endpointing rules; their defaults are the settings' (`from_settings`), written once there."""

    threshold: float
    min_speech_ms: int
    turn_detection: str
    """`adaptive`: a pause after a complete command ends it at `min_silence_ms`; `fixed`: never;
    `manual`: no pause ends an utterance."""
    min_silence_ms: int
    silence_ms: int
    speech_pad_ms: int
    partial_interval_ms: int
    max_utterance_s: float

    @classmethod
    def from_settings(cls, settings: Settings, overrides: Mapping[str, Any] | None = None) -> EndpointerConfig:
        """The daemon's endpointing settings, with a session's `overrides` (each already checked) by
        field name; `ConfigError` if together they make a short silence longer than the long one."""
        values = {f.name: getattr(settings, VAD_FIELDS.get(f.name, f.name)) for f in dataclasses.fields(cls)}
        values.update(overrides or {})
        check_silences(values["min_silence_ms"], values["silence_ms"])
        return cls(**values)

    @property
    def adaptive(self) -> bool:
        return self.turn_detection == "adaptive"

    @property
    def manual(self) -> bool:
        return self.turn_detection == "manual"

    @property
    def trailing_pad_samples(self) -> int:
        """Audio kept after the last speech window (a trailing consonant) by the first speculative
        decode: never more than what exists when it starts."""
        return min(ms_to_samples(self.speech_pad_ms), self.speculate_after_samples)

    @property
    def speculate_after_samples(self) -> int:
        """Silence after which the final is decoded ahead of the endpoint (discarded if speech resumes).

        Adaptive: half the short silence, so the verdict is there about when the short silence is.
        """
        if not self.adaptive:
            return self.second_speculation_samples
        return min(self.second_speculation_samples, silence_samples(self.min_silence_ms / 2))

    @property
    def second_speculation_samples(self) -> int:
        """Silence after which a pause that waits the long silence has its final decoded: a third of
        `silence_ms`. `fixed` speculates only here; `adaptive` speculates again here at a pause not
        judged complete, so its final keeps as much trailing audio as `fixed`'s (the first
        speculation, earlier, could keep less)."""
        return silence_samples(self.silence_ms / 3)

    @property
    def long_wait_pad_samples(self) -> int:
        """Audio kept after the last speech window by an utterance that waited the long silence:
        what exists at `second_speculation_samples`, whether or not that speculation happened."""
        return min(ms_to_samples(self.speech_pad_ms), self.second_speculation_samples)


@dataclass(frozen=True)
class SpeechStart:
    """An utterance began at sample `start` (pre-roll included)."""

    start: int


@dataclass(frozen=True)
class PartialDue:
    """Another `partial_interval_ms` of speech arrived: decode the utterance up to `end`."""

    end: int


@dataclass(frozen=True)
class SpeechPaused:
    """Silence has lasted long enough to decode the final ahead of time: audio up to `end`."""

    end: int
    read_turn: bool = True
    """The turn detector reads this decode (the pause's first); the second look is for the final
    only, as the endpointer takes one verdict per pause."""


ENDPOINT_REASONS = ("complete", "silence", "forced")


@dataclass(frozen=True)
class Endpoint:
    """The utterance ended at sample `end`, for `reason`: `complete` (the short silence after a
    complete command), `silence` (the full silence) or `forced` (the length cap, or a flush)."""

    end: int
    reason: str
    silence: int = 0
    """Samples of silence waited after the speech (0 when forced)."""

    @property
    def forced(self) -> bool:
        return self.reason == "forced"


EndpointEvent = SpeechStart | PartialDue | SpeechPaused | Endpoint


class Endpointer:
    """Turns one speech probability per window into utterance events."""

    def __init__(self, config: EndpointerConfig) -> None:
        self.config = config
        self._min_speech = ms_to_samples(config.min_speech_ms)
        self._silence = silence_samples(config.silence_ms)
        self._min_silence = silence_samples(config.min_silence_ms)
        self._pad = ms_to_samples(config.speech_pad_ms)
        self._partial_interval = ms_to_samples(config.partial_interval_ms)
        self._max_utterance = int(config.max_utterance_s * SAMPLE_RATE)
        self.position = 0
        """Samples consumed so far (end of the last window)."""
        self._floor = 0
        """No utterance may start before this sample (the end of the previous one)."""
        self.in_speech = False
        self.utterance_start = 0
        self._onset_start = -1
        self._onset_speech = 0
        self._onset_gap = 0
        self._lost_onset_start = -1
        """Where the last onset that died began (-1: none), and where its speech ended: the next
        onset within `ONSET_REACH` of that end starts there."""
        self._lost_onset_end = 0
        self._last_speech_end = 0
        self._silence_run = 0
        self._judged_complete = False
        """The pause in progress was judged complete: it ends at `min_silence_ms`, not `silence_ms`."""
        self._since_partial = 0
        self._speculations = 0
        """Speculative decodes asked for in the pause in progress: none, the first, or the second."""
        self._verdict_in = False

    def process(self, probability: float) -> list[EndpointEvent]:
        """Consume one window's speech probability."""
        window_start = self.position
        self.position += WINDOW
        if not self.in_speech:
            return self._idle(probability, window_start)
        return self._speaking(probability)

    def flush(self, end: int | None = None) -> list[EndpointEvent]:
        """End the utterance in progress now (client flush, end of stream, idle timeout). Speech the
        stream ended on that had not yet lasted `min_speech_ms` (at least `FLUSH_MIN_SPEECH` of it)
        is an utterance too: the client has said the command is over, and it may be one short word.
        Shorter speech still going on is left to go on counting: a client that flushes every 100 ms
        would otherwise have every word thrown away before it had lasted 160 ms."""
        last = self.position if end is None else max(end, self.position)
        events: list[EndpointEvent] = []
        if not self.in_speech and self._onset_start >= 0 and self._onset_speech >= FLUSH_MIN_SPEECH:
            events.append(self._begin_utterance())
        self._lost_onset_start = -1  # speech that died before the flush belongs to what the flush ended
        if self.in_speech:
            events.append(self._finish(last, "forced"))
        return events

    def clear(self, end: int | None = None) -> None:
        """Forget the utterance and any speech not yet confirmed (the client discarded its audio)."""
        self.flush(end)
        self._onset_start, self._onset_speech, self._lost_onset_start = -1, 0, -1

    @property
    def hearing_onset(self) -> bool:
        """Speech is being heard that has not yet lasted `min_speech_ms` (an utterance not yet begun,
        which dies after a dip longer than `ONSET_GAP`)."""
        return not self.in_speech and self._onset_start >= 0

    @property
    def earliest_start(self) -> int:
        """The earliest sample an utterance not yet begun could start at: audio before it is never needed."""
        return self._start_of(self._onset_start if self._onset_start >= 0 else self.position)

    def verdict(self, end: int, verdict: TurnVerdict) -> list[EndpointEvent]:
        """The turn detector read the final speculated at `end`: a complete command ends the pause at
        the short silence (now, if that much has passed); anything else waits the long one, with a
        second speculation (`SpeechPaused` again, now if it is due). Ignored unless adaptive and `end`
        is the first speculation of the pause in progress."""
        if not (self.config.adaptive and self.in_speech and self._speculations == 1 and end == self._short_end()):
            return []
        self._verdict_in = True
        if verdict is TurnVerdict.COMPLETE:
            self._judged_complete = True
            return [self._finish_pause()] if self._silence_run >= self._min_silence else []
        return self._speculation_if_due()

    def _idle(self, probability: float, window_start: int) -> list[EndpointEvent]:
        if probability >= self.config.threshold:
            if self._onset_start < 0:
                self._onset_start = window_start
            self._onset_speech += WINDOW
            self._onset_gap = 0
        elif self._onset_start >= 0:
            self._onset_gap += WINDOW
            if self._onset_gap > ONSET_GAP:
                carried = self._reachable_lost_onset(self._onset_start)
                self._lost_onset_start = carried if carried >= 0 else self._onset_start
                self._lost_onset_end = self.position - self._onset_gap
                self._onset_start, self._onset_speech = -1, 0
        if self._onset_start < 0 or self._onset_speech < self._min_speech:
            return []
        events: list[EndpointEvent] = [self._begin_utterance()]
        events.extend(self._partial_if_due())
        return events

    def _reachable_lost_onset(self, onset: int) -> int:
        """The start of the onset that died just before `onset` (within `ONSET_REACH`), at most
        `ONSET_LOOKBACK` before it; -1 when there is none."""
        if self._lost_onset_start < 0 or onset - self._lost_onset_end > ONSET_REACH:
            return -1
        return max(self._lost_onset_start, onset - ONSET_LOOKBACK)

    def _start_of(self, onset: int) -> int:
        """Where an utterance whose onset began at `onset` starts: there, or at the onset that died
        just before it, less the pre-roll, never before the previous utterance's end."""
        lost = self._reachable_lost_onset(onset)
        return max((lost if lost >= 0 else onset) - self._pad, self._floor, 0)

    def _begin_utterance(self) -> SpeechStart:
        """The onset in progress becomes an utterance, from where its speech began (or the onset that
        died just before it) less the pre-roll."""
        self.in_speech = True
        self.utterance_start = self._start_of(self._onset_start)
        self._onset_start, self._onset_speech, self._lost_onset_start = -1, 0, -1
        self._last_speech_end = self.position
        self._silence_run = 0
        self._judged_complete = False
        self._since_partial = self.position - self.utterance_start
        self._speculations, self._verdict_in = 0, False
        return SpeechStart(self.utterance_start)

    def _speaking(self, probability: float) -> list[EndpointEvent]:
        events: list[EndpointEvent] = []
        if probability >= self.config.threshold:
            self._last_speech_end = self.position
            self._silence_run = 0
            self._judged_complete = False
            self._speculations, self._verdict_in = 0, False
            self._since_partial += WINDOW
            events.extend(self._partial_if_due())
        elif not self.config.manual:
            self._silence_run += WINDOW
            if self._silence_run >= (self._min_silence if self._judged_complete else self._silence):
                events.append(self._finish_pause())
                return events
            events.extend(self._speculation_if_due())
        if self.position - self.utterance_start >= self._max_utterance:
            events.append(self._finish(self.position, "forced"))
        return events

    def _partial_if_due(self) -> list[EndpointEvent]:
        if self._since_partial < self._partial_interval:
            return []
        self._since_partial = 0
        return [PartialDue(self.position)]

    def _speculation_if_due(self) -> list[EndpointEvent]:
        """The first speculative decode of a pause once `speculate_after_samples` of silence; in
        adaptive mode a second one at `second_speculation_samples`, once the first was judged not
        complete (a verdict that comes later asks for it at once)."""
        if self._speculations == 0 and self._silence_run >= self.config.speculate_after_samples:
            self._speculations = 1
            return [SpeechPaused(self._short_end())]
        second_due = self._silence_run >= self.config.second_speculation_samples > self.config.speculate_after_samples
        if self._speculations == 1 and self._verdict_in and second_due:
            self._speculations = 2
            return [SpeechPaused(self._long_end(), read_turn=False)]
        return []

    def _short_end(self) -> int:
        """Where the audio of an utterance ended by a complete verdict ends: what the first
        speculative decode had."""
        return min(self._last_speech_end + self.config.trailing_pad_samples, self.position)

    def _long_end(self) -> int:
        """Where the audio of an utterance that waited the long silence ends, however fast its
        verdict came: the final does not depend on decode speed or on framing."""
        return min(self._last_speech_end + self.config.long_wait_pad_samples, self.position)

    def _finish_pause(self) -> Endpoint:
        """End the utterance at the pause: a complete one on its first speculation's audio, any
        other on the long wait's."""
        if self._judged_complete:
            return self._finish(self._short_end(), "complete")
        return self._finish(self._long_end(), "silence")

    def _finish(self, end: int, reason: str) -> Endpoint:
        silence = 0 if reason == "forced" else self._silence_run
        self.in_speech = False
        self._floor = end
        self._silence_run = 0
        return Endpoint(end, reason, silence)
