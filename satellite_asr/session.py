"""One audio stream: VAD, endpointing, the utterance's audio and its decodes.

Every protocol adapter drives this same class (and `recording.py`, for whole files): they feed
16 kHz float32 samples, ask for flush/close, and turn the events it emits into wire messages.

Promises kept here: exactly one `FinalTranscript` per utterance that had speech (also on flush,
close and engine errors), unless its client discards it (`clear`) or leaves; finals in utterance
order; `PartialTranscript.stable_text` only grows.
The final is a fresh decode of the whole utterance, the same however the audio was framed; in the
rare case it does not start with the stable text streamed before it, the final wins (and
`satellite_asr_final_rewrites_total` counts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from satellite_asr.audio import SAMPLE_RATE, Audio, AudioBuffer
from satellite_asr.biasing.context import biasing_context, whole_characters
from satellite_asr.biasing.correction import corrector_for, letters
from satellite_asr.config import Settings
from satellite_asr.engines.base import Engine, EngineStream, StreamOptions, Transcript
from satellite_asr.events import (
    FinalTranscript,
    PartialTranscript,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
)
from satellite_asr.metrics import Metrics
from satellite_asr.scheduler import BATCH, FINAL, DecodeScheduler, PartialRequests
from satellite_asr.vad.endpointer import (
    Endpoint,
    Endpointer,
    EndpointerConfig,
    EndpointEvent,
    PartialDue,
    SpeechPaused,
    SpeechStart,
)
from satellite_asr.vad.prosody import final_pitch
from satellite_asr.vad.silero import SileroVad
from satellite_asr.vad.turn import TurnDetector

log = logging.getLogger(__name__)
TURN_DECISION = "session %s: utterance %d paused at %.2f s: %r (%s per token), pitch heading %s semitones: %s"
"""The debug line of each turn verdict handed to the endpointer (`tests.helpers.turn_decisions` reads it): the
session, the utterance, where the pause is in the stream, the speculative text, the engine's mean
log-probability per token for it, the voice's pitch heading (each None when unknown) and the verdict."""

Emit = Callable[[SessionEvent], Awaitable[None]]

FEED_PIECE = SAMPLE_RATE // 2
"""Most samples taken in one step: audio is trimmed between steps, so a huge frame cannot grow it."""
GONE_CHECK_S = 0.5
"""How often a feed held back asks whether its client left (see `Session.feed`)."""


class ClientGone(ConnectionError):
    """The client left while its feed was held back: its adapter releases the session as on any disconnect."""


class OutOfTime(Exception):
    """Shutdown has no time left for a final's decode (`Session.hurry`): it is sent with the text
    already promised, after a `shutdown` error."""


DECODING_OPTIONS = frozenset({"language", "context", "terms", "partials"})
"""What a session's utterances are decoded with, which a client may change mid-stream."""


@dataclass(frozen=True)
class SessionOptions:
    """A session's settings, fixed when it is created but for `DECODING_OPTIONS`, which
    `Session.change_decoding` changes from the next utterance on."""

    endpointing: EndpointerConfig
    partials: bool
    language: str | None
    context: str
    """The client's biasing text after the daemon's `context` (what `session_created` echoes)."""
    max_pending_finals: int
    max_feed_ahead_s: float | None
    """None: no pacing (a `recording` read as fast as the engine goes)."""
    batch: bool = False
    """A file, not a person waiting: finals decoded at `BATCH` priority, after live partials, and none
    decoded ahead at a pause (a speculation that speech going on would waste)."""
    terms: tuple[str, ...] = ()
    """Names and terms the client gave as a list (Wyoming `transcript_names`, `transcript_terms`), of
    `whole_characters`."""
    household_names: bool = True
    """Whether the home's names join the client's (a WebSocket client may opt out)."""
    home_names: tuple[str, ...] = ()
    """The home's names, ranked; the session manager fills them in when it creates the session."""
    home_names_in_context: int = 0
    """How many of `home_names` the engine gets as context (`ha_names_limit` or the engine's choice)."""
    idle_means_missing_audio: bool = False
    """What the idle clock (`Session.quiet_seconds`) reads: False, the time since the last speech (silence
    streamed does not keep the session open); True, the audio the client failed to send since then (a
    client streaming at a microphone's pace is never idle). `StreamingConnection.idle_means_missing_audio`
    sets it for the APIs whose clients do not reconnect after the idle timeout."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        vad: Mapping[str, Any] | None = None,
        partials: bool | None = None,
        language: str | None,
        context: str = "",
        batch: bool = False,
        terms: Sequence[str] = (),
        household_names: bool = True,
    ) -> SessionOptions:
        """The daemon's defaults with a client's overrides; the client's context follows the daemon's.

        `vad` overrides `EndpointerConfig` fields by name. `language` is the one the utterances are
        decoded in (None: the engine detects it); protocols differ in how a client asks for the
        daemon's default, so they resolve it.
        """
        return cls(
            EndpointerConfig.from_settings(settings, vad),
            settings.partials if partials is None else partials,
            language,
            "\n".join(part for part in (settings.context, context) if part),
            settings.max_pending_finals,
            settings.max_feed_ahead_s,
            batch=batch,
            terms=tuple(whole_characters(term) for term in terms),
            household_names=household_names,
        )

    @property
    def engine_context(self) -> str:
        """What the engine decodes with: the client's words first, then the home's best-ranked names."""
        return biasing_context(self.home_names[: self.home_names_in_context], self.terms, self.context)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the transcript is corrected towards: the client's, then all of the home's."""
        return (*self.terms, *self.home_names)

    @property
    def recording(self) -> bool:
        """A recording the daemon reads itself, as fast as it goes (a file `transcribe` reads, an
        upload): no pacing, so no client can be idle, and a pause waits for its turn verdict."""
        return self.max_feed_ahead_s is None


@dataclass
class _Speculation:
    """A final decoded ahead of the endpoint, valid only if the utterance ends at `end`."""

    end: int
    task: asyncio.Task[Transcript]


@dataclass
class _Utterance:
    id: int
    start: int
    stream: EngineStream
    names: tuple[str, ...]
    """The session's names when the utterance began: its transcripts are corrected towards them
    (`Session.change_decoding` applies from the next utterance on)."""
    language: str | None
    """The session's language when the utterance began."""
    partials: PartialRequests | None = None
    stable: str = ""
    previous_partial: str = ""
    partial_due_at: float | None = None
    speculation: _Speculation | None = None
    turn_reader: asyncio.Task[None] | None = None
    """Reads the speculative final's text for the turn detector (adaptive endpointing)."""


def stable_prefix(previous: str, current: str) -> str:
    """Words two successive partials agree on, without the newest text's last word (it may be cut).

    Returned as a prefix of `current`, so it can be sent as text that will not change.
    """
    old_words, new_words = previous.split(), current.split()
    agreed = 0
    for old, new in zip(old_words, new_words[:-1], strict=False):
        if old != new:
            break
        agreed += 1
    if agreed == 0:
        return ""
    position = 0
    for word in new_words[:agreed]:
        position = current.index(word, position) + len(word)
    return current[:position]


def keep_prefix(text: str, prefix: str) -> str:
    """A partial's `text` made to start with `prefix`, the stable text promised to the client.

    A partial normally continues it; when it differs only in case or punctuation its first words
    are replaced by the promised ones, otherwise its text follows them.
    """
    if text.startswith(prefix):
        return text
    promised, words = prefix.split(), text.split()
    if [letters(w) for w in words[: len(promised)]] == [letters(w) for w in promised]:
        words = words[len(promised) :]
    return " ".join([prefix.rstrip(), *words])


def _words_start_with(text: str, prefix: str) -> bool:
    """Whether `text`'s words begin with `prefix`'s, case and punctuation aside."""
    promised, words = [letters(w) for w in prefix.split()], [letters(w) for w in text.split()]
    return words[: len(promised)] == promised


class Session:
    """Per-stream state; create through `SessionManager`."""

    def __init__(
        self,
        session_id: str,
        protocol: str,
        options: SessionOptions,
        *,
        vad: SileroVad,
        engine: Engine,
        scheduler: DecodeScheduler,
        metrics: Metrics,
        turn_detector: TurnDetector,
        emit: Emit,
        quiet_s: float = 0.0,
    ) -> None:
        self.id = session_id
        self.protocol = protocol
        self.options = options
        self._engine = engine
        self._scheduler = scheduler
        self._metrics = metrics
        self._turn_detector = turn_detector
        self._emit_to_client = emit
        self._endpointer = Endpointer(options.endpointing)
        self._engine_context = options.engine_context
        self._vad_stream = vad.open_stream()
        self._audio = AudioBuffer()
        self._utterance: _Utterance | None = None
        self._last_final: asyncio.Task[None] | None = None
        self._finals: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._final_priority = BATCH if options.batch else FINAL
        self._hurried = asyncio.Event()
        self.utterances = 0
        self.samples_received = 0
        self.last_audio_at = time.monotonic()
        self._opened_at = self.last_audio_at
        self.last_speech_at = self._opened_at - quiet_s
        """When the endpointer last reported speech (start, pause, end), or the session's start less
        `quiet_s`, the quiet it takes over from the session it follows on the same connection."""
        self._held_s = 0.0
        """Seconds the client's audio has waited on the server (decodes, VAD, the lock), not counted as quiet."""
        self._held_since: float | None = None
        self._held_at_speech = 0.0  # `_held_s` then, for `quiet_seconds`
        self._held_at_audio = 0.0
        self._unsent_s = quiet_s
        """The audio reading of the idle clock (`idle_means_missing_audio`) at `_unsent_at`: the
        wall-clock time since the last speech less the audio received since, brought back to 0 at each
        piece it falls below (audio sent ahead of real time, or arriving in a burst after a gap, earns
        no credit for a later gap)."""
        self._unsent_at = self._opened_at
        self._held_at_unsent = 0.0  # `_held_s` at `_unsent_at`
        self.closed = False

    def change_decoding(self, **changes: Any) -> None:
        """`DECODING_OPTIONS` changed from the next utterance on: a client may change them mid-stream
        (Deepgram's `Configure` its terms, and on Flux its language; AssemblyAI's `UpdateConfiguration`
        its terms and language; a Realtime `session.update` its keywords; Sarvam's `config.update` its
        language, prompt and partials);
        the utterance in progress keeps those it began with."""
        assert changes.keys() <= DECODING_OPTIONS, changes
        if "terms" in changes:
            changes["terms"] = tuple(whole_characters(term) for term in changes["terms"])
        self.options = replace(self.options, **changes)
        self._engine_context = self.options.engine_context

    @property
    def seconds_received(self) -> float:
        return self.samples_received / SAMPLE_RATE

    @property
    def in_utterance(self) -> bool:
        return self._utterance is not None

    def quiet_seconds(self, now: float) -> float:
        """How long no speech has been heard at `now`: what the idle timeout measures. Inside an
        utterance arriving audio counts (its end comes by endpoint or length cap), and so it does
        while speech not yet confirmed is heard (a command's first `min_speech_ms`: an idle close
        there would cut it in two; an onset that dies gives back the quiet it had). Time the client's
        audio waited on the server does not count: a busy engine must not expire a session whose
        speech it has not listened to yet (the client's own pace, `max_feed_ahead_s`, does count).

        With `SessionOptions.idle_means_missing_audio` it reads the audio the client failed to send
        since the last speech instead: the time since, less the audio received since (and the time
        that audio waited on the server); a client streaming at real-time pace stays at 0."""
        if self.options.idle_means_missing_audio:
            return self._unsent_seconds(now)
        hearing = self.in_utterance or self._endpointer.hearing_onset
        if hearing and self.last_audio_at > self.last_speech_at:
            heard_at, held_then = self.last_audio_at, self._held_at_audio
        else:
            heard_at, held_then = self.last_speech_at, self._held_at_speech
        return now - heard_at - (self._held_total(now) - held_then)

    def _unsent_seconds(self, now: float) -> float:
        return self._unsent_s + now - self._unsent_at - (self._held_total(now) - self._held_at_unsent)

    def _reset_unsent(self, now: float, unsent_s: float) -> None:
        self._unsent_s, self._unsent_at, self._held_at_unsent = max(0.0, unsent_s), now, self._held_total(now)

    def _held_total(self, now: float) -> float:
        return self._held_s + (now - self._held_since if self._held_since is not None else 0.0)

    def _hold(self, held: bool) -> None:
        """Whether the client's audio waits on the server from now (see `quiet_seconds`)."""
        now = time.monotonic()
        if held and self._held_since is None:
            self._held_since = now
        elif not held and self._held_since is not None:
            self._held_s += now - self._held_since
            self._held_since = None

    @property
    def pending_finals(self) -> int:
        """Ended utterances whose final has not been sent yet."""
        return len(self._finals)

    @property
    def buffered_seconds(self) -> float:
        """Audio held now: at most `max_utterance_s` plus the pre-roll and one `FEED_PIECE`."""
        return (self._audio.end - self._audio.base) / SAMPLE_RATE

    async def feed(self, samples: Audio, gone: Callable[[], bool] = lambda: False) -> float:
        """Take 16 kHz mono float32 samples; emits events as VAD and decodes produce them.

        Back-pressure: this waits while the session has `max_pending_finals` finals pending or its
        audio is more than `max_feed_ahead_s` ahead of real time, so its adapter stops reading the
        client instead of queueing without end. Returns the seconds it waited so (not work done).
        While it waits it asks `gone` every `GONE_CHECK_S` and raises `ClientGone` when the client
        left: its adapter reads nothing meanwhile, so would not see the close until the wait ends.
        No samples are no audio: nor do they count as audio to the idle clock (`quiet_seconds`).
        """
        waited = 0.0
        self._hold(True)
        try:
            for offset in range(0, samples.size, FEED_PIECE):
                piece = samples[offset : offset + FEED_PIECE]
                started = time.perf_counter()
                await self._wait_for_room(piece.size, gone)
                waited += time.perf_counter() - started
                await self._feed_piece(piece)
        finally:
            self._hold(False)
        return waited

    async def _wait_for_room(self, samples: int, gone: Callable[[], bool]) -> None:
        while not self.closed:  # a closed session takes no audio: nothing to wait for
            if self.pending_finals >= self.options.max_pending_finals:
                await asyncio.wait(list(self._finals), timeout=GONE_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
            elif (ahead := self._seconds_ahead(samples)) > 0:
                self._hold(False)  # the client's own pace: quiet it makes
                await asyncio.sleep(min(ahead, GONE_CHECK_S))
                self._hold(True)
            else:
                return
            if gone():
                raise ClientGone("the client left while its audio waited for room")

    def _seconds_ahead(self, samples: int) -> float:
        """How far past `max_feed_ahead_s` ahead of real time the session would be with `samples` more."""
        if self.options.max_feed_ahead_s is None:
            return 0.0
        audio_s = (self.samples_received + samples) / SAMPLE_RATE
        return audio_s - (time.monotonic() - self._opened_at) - self.options.max_feed_ahead_s

    async def _feed_piece(self, samples: Audio) -> None:
        async with self._lock:
            if self.closed:
                return
            self.last_audio_at = time.monotonic()
            self._held_at_audio = self._held_total(self.last_audio_at)
            unsent = self._unsent_seconds(self.last_audio_at) - samples.size / SAMPLE_RATE
            self._reset_unsent(self.last_audio_at, unsent)
            self._audio.append(samples)
            self.samples_received += samples.size
            self._metrics.audio_seconds.labels(self.protocol).inc(samples.size / SAMPLE_RATE)
            for probability in await self._vad_stream.process(samples):
                for event in self._endpointer.process(probability):
                    await self._on_endpointer(event)
            keep_from = self._endpointer.earliest_start  # the pre-roll of an onset not yet confirmed
            if self._utterance is not None:  # the utterance's audio, which the length cap bounds
                keep_from = min(keep_from, self._utterance.start)
            self._audio.drop_before(keep_from)

    async def flush(self) -> None:
        """Finalize the utterance in progress now; returns once every pending final was sent. Its
        adapter reads none of the client's next audio meanwhile: that wait on the server is no quiet
        to the idle clock (`quiet_seconds`), or a slow final would expire the speech sent after it."""
        async with self._lock:
            await self._flush_locked()
        self._hold(True)
        try:
            await self.wait_finals()
        finally:
            self._hold(False)

    async def clear(self) -> None:
        """Drop the utterance in progress without a final (the client discarded its audio); the
        finals of utterances that already ended still come."""
        async with self._lock:
            utterance, self._utterance = self._utterance, None
            self._endpointer.clear(self._audio.end)
            if utterance is not None:
                await self._discard(utterance)

    async def close(self, reason: str, *, finalize: bool = True) -> None:
        """End the session. With `finalize`, the utterance in progress gets its final first;
        without (the client is gone), everything in flight is cancelled. A second close that
        finalizes (shutdown or the idle timeout while the client's own end is finalizing) returns
        once those finals are sent too: its caller closes the connection next, which lost them."""
        async with self._lock:
            again = self.closed
            if again and not finalize:  # a close that was finalizing was cut short (shutdown out of time)
                await self._cancel_all()
            elif not again:
                if finalize:
                    await self._flush_locked()
                self.closed = True
        if again:
            if finalize:
                await self.wait_finals()
            return
        if finalize:
            await self.wait_finals()
        else:
            await self._cancel_all()
        log.info(
            "session %s closed (%s): %.1f s audio, %d utterances, reason %s",
            self.id,
            self.protocol,
            self.seconds_received,
            self.utterances,
            reason,
        )

    def hurry(self) -> None:
        """Shutdown is running out of time: finals not decoded yet, and any to come, are sent at once
        with the text already promised (usually what the partials had made stable), after an error
        `shutdown`, so that each utterance still gets its final and the connection its Close."""
        self._hurried.set()

    async def wait_finals(self) -> None:
        while self._finals:
            await asyncio.gather(*list(self._finals), return_exceptions=True)

    async def _flush_locked(self) -> None:
        for event in self._endpointer.flush(self._audio.end):
            await self._on_endpointer(event)

    async def _cancel_all(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is not None:
            await self._discard(utterance)
        for task in list(self._finals):
            task.cancel()
        await asyncio.gather(*list(self._finals), return_exceptions=True)

    async def _on_endpointer(self, event: EndpointEvent) -> None:
        self.last_speech_at = time.monotonic()
        self._held_at_speech = self._held_total(self.last_speech_at)
        self._reset_unsent(self.last_speech_at, 0.0)
        if isinstance(event, SpeechStart):
            await self._start_utterance(event.start)
            return
        utterance = self._utterance
        if utterance is None:
            return
        if isinstance(event, PartialDue):
            self._cancel_speculation(utterance)
            if utterance.partials is not None:
                if utterance.partial_due_at is None:
                    utterance.partial_due_at = time.monotonic()
                utterance.partials.request()
        elif isinstance(event, SpeechPaused) and not self.options.batch:
            await self._speculate(utterance, event.end, read_turn=event.read_turn)
        elif isinstance(event, Endpoint):
            await self._end_utterance(event)

    async def _start_utterance(self, start: int) -> None:
        self.utterances += 1
        names = self.options.names
        stream = self._engine.open_stream(
            StreamOptions(language=self.options.language, context=self._engine_context, names=names)
        )
        start = max(start, self._audio.base)
        utterance = _Utterance(self.utterances, start, stream, names, self.options.language)
        if self.options.partials:
            utterance.partials = PartialRequests(lambda: self._decode_partial(utterance), self._metrics)
        self._utterance = utterance
        await self._emit(SpeechStarted(utterance.id, utterance.start / SAMPLE_RATE))

    async def _decode_partial(self, utterance: _Utterance) -> None:
        try:
            result = await self._scheduler.partial(
                self.id, utterance.stream, lambda: self._audio.slice(utterance.start, self._audio.end)
            )
        except Exception as exc:  # any engine failure: the final still comes (see `_finalize`)
            log.warning("session %s: partial decode failed: %r", self.id, exc)
            return
        if self._utterance is not utterance or not result.text:
            return
        heard = await self._corrected(result, utterance.names)
        if self._utterance is not utterance:
            return
        candidate = stable_prefix(utterance.previous_partial, heard)
        if candidate.startswith(utterance.stable) and len(candidate) > len(utterance.stable):
            utterance.stable = candidate
        utterance.previous_partial = heard
        text = keep_prefix(heard, utterance.stable)
        if utterance.partial_due_at is not None:
            self._metrics.partial_latency.observe(time.monotonic() - utterance.partial_due_at)
            utterance.partial_due_at = None
        await self._emit(PartialTranscript(utterance.id, text, utterance.stable))

    async def _corrected(self, result: Transcript, names: tuple[str, ...]) -> str:
        """The engine's text with what sounds like one of `names` (its utterance's) written as that name.

        In a worker thread, as is making the matcher for a new list of names (a tenth of a second
        for a home of 1420): the cost grows with the text's words times the names (a 100-word
        dictation against that home took half a second), and on the event loop that would stall
        every other session's audio.
        """
        if not names:
            return result.text
        return await asyncio.to_thread(
            lambda: corrector_for(names).correct(result.text, result.token_spans, result.nearly_written)
        )

    async def _speculate(self, utterance: _Utterance, end: int, *, read_turn: bool) -> None:
        """Decode the final now, the engine's whole attention on it (a partial in flight is dropped).

        Adaptive endpointing reads its text (and hears the voice's pitch): a complete command ends at
        the short silence.
        """
        self._cancel_speculation(utterance)
        if utterance.partials is not None:
            await utterance.partials.cancel()
        audio = self._audio.slice(utterance.start, end)
        task = asyncio.create_task(
            self._scheduler.final(self.id, utterance.stream, audio, self._final_priority), name="speculative-final"
        )
        speculation = _Speculation(end, task)
        utterance.speculation = speculation
        if not (self.options.endpointing.adaptive and read_turn):
            return
        if self.options.recording:
            # a recording is fed as fast as VAD reads it, past the long silence before any decode is
            # done: its audio waits for the verdict, which a live stream's engine gives during the pause
            await self._read_turn(utterance, speculation, audio, lock_held=True)
        else:
            utterance.turn_reader = asyncio.create_task(
                self._read_turn(utterance, speculation, audio, lock_held=False), name="turn-reader"
            )

    async def _read_turn(
        self, utterance: _Utterance, speculation: _Speculation, audio: Audio, *, lock_held: bool
    ) -> None:
        """Hand the turn detector's verdict on the speculative text, and on where the voice's pitch
        was heading as it stopped (measured while the engine decodes), to the endpointer."""
        pitch = asyncio.ensure_future(asyncio.to_thread(self._pitch_or_none, audio))
        try:
            result = await asyncio.shield(speculation.task)
            ending = await pitch
        except (asyncio.CancelledError, Exception):  # a failed decode is the final's to report
            pitch.cancel()
            current = asyncio.current_task()
            if lock_held and current is not None and current.cancelling():
                raise  # the feed awaiting the verdict was cancelled, not the speculation: it stops
            return
        language = result.language or utterance.language
        verdict = self._turn_detector.verdict(result.text, language, result.mean_logprob, ending)
        async with contextlib.nullcontext() if lock_held else self._lock:
            if self._utterance is not utterance or utterance.speculation is not speculation:
                return
            at_s, logprob = speculation.end / SAMPLE_RATE, result.mean_logprob
            log.debug(TURN_DECISION, self.id, utterance.id, at_s, result.text, logprob, ending, verdict.value)
            for event in self._endpointer.verdict(speculation.end, verdict):
                await self._on_endpointer(event)

    def _pitch_or_none(self, audio: Audio) -> float | None:
        """Where the voice's pitch was heading; a measure that fails leaves the verdict to the text rules."""
        try:
            return final_pitch(audio)
        except Exception:
            log.warning("session %s: the pitch could not be measured", self.id, exc_info=True)
            return None

    @staticmethod
    def _cancel_speculation(utterance: _Utterance) -> None:
        if utterance.speculation is not None:
            utterance.speculation.task.cancel()
            utterance.speculation = None
        if utterance.turn_reader is not None:
            if utterance.turn_reader is not asyncio.current_task():
                utterance.turn_reader.cancel()
            utterance.turn_reader = None

    async def _end_utterance(self, endpoint: Endpoint) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return
        await self._emit(SpeechStopped(utterance.id, endpoint.end / SAMPLE_RATE))
        audio = self._audio.slice(utterance.start, endpoint.end)
        self._metrics.endpoints.labels(endpoint.reason).inc()
        if not endpoint.forced:
            self._metrics.endpoint_silence.observe(endpoint.silence / SAMPLE_RATE)
        task = asyncio.create_task(
            self._finalize(utterance, audio, endpoint, self._last_final, time.monotonic()),
            name=f"final-{self.id}-{utterance.id}",
        )
        self._last_final = task
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    async def _finalize(
        self,
        utterance: _Utterance,
        audio: Audio,
        endpoint: Endpoint,
        previous: asyncio.Task[None] | None,
        ended_at: float,
    ) -> None:
        if utterance.partials is not None:
            await utterance.partials.cancel()
        text, language = utterance.stable, utterance.language
        decoded: Transcript | None = None  # the decode whose text is sent
        try:
            result = await self._unless_hurried(self._decode_final(utterance, audio, endpoint))
            text, language = await self._corrected(result, utterance.names), result.language or language
            decoded = result
            if not _words_start_with(text, utterance.stable):
                self._metrics.final_rewrites.inc()
        except Exception as exc:  # whatever the engine raised, the utterance keeps its final (the promised text)
            out_of_time = isinstance(exc, OutOfTime)
            level = logging.INFO if out_of_time else logging.WARNING
            log.log(level, "session %s: final decode of utterance %d failed: %r", self.id, utterance.id, exc)
            message = f"transcription of utterance {utterance.id} failed: {exc}"
            await self._emit(SessionError("shutdown" if out_of_time else "engine_error", message, utterance.id))
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        start_s, end_s = utterance.start / SAMPLE_RATE, endpoint.end / SAMPLE_RATE
        await self._emit(
            FinalTranscript(
                utterance.id,
                text,
                not endpoint.forced,
                start_s,
                end_s,
                language,
                endpoint.reason,
                avg_logprob=None if decoded is None else decoded.avg_logprob,
                no_speech_prob=None if decoded is None else decoded.no_speech_prob,
            )
        )
        self._metrics.final_latency.observe(time.monotonic() - ended_at)

    async def _decode_final(self, utterance: _Utterance, audio: Audio, endpoint: Endpoint) -> Transcript:
        result = await self._speculated_result(utterance, endpoint.end)
        if result is None:
            result = await self._scheduler.final(self.id, utterance.stream, audio, self._final_priority)
        return result

    async def _unless_hurried(self, decode: Awaitable[Transcript]) -> Transcript:
        """`decode`'s result, or `OutOfTime` (the decode cancelled) once `hurry` was called."""
        decoding = asyncio.ensure_future(decode)
        hurried = asyncio.ensure_future(self._hurried.wait())
        try:
            await asyncio.wait((decoding, hurried), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            decoding.cancel()
            raise
        finally:
            hurried.cancel()
        if not decoding.done():
            decoding.cancel()
            raise OutOfTime("the daemon is shutting down and had no time left to transcribe it")
        return decoding.result()

    async def _speculated_result(self, utterance: _Utterance, end: int) -> Transcript | None:
        speculation, utterance.speculation = utterance.speculation, None
        if speculation is None:
            log.debug("session %s: utterance %d ended without a speculative final", self.id, utterance.id)
            return None
        if speculation.end != end:
            log.debug("session %s: speculative final of utterance %d is stale", self.id, utterance.id)
            speculation.task.cancel()
            return None
        log.debug(
            "session %s: utterance %d uses its speculative final (done: %s)",
            self.id,
            utterance.id,
            speculation.task.done(),
        )
        try:
            return await speculation.task
        except Exception:  # decoded again by the caller, which reports a failure that persists
            return None

    async def _discard(self, utterance: _Utterance) -> None:
        self._cancel_speculation(utterance)
        if utterance.partials is not None:
            await utterance.partials.cancel()

    async def _emit(self, event: SessionEvent) -> None:
        if isinstance(event, SessionError):
            self._metrics.errors.labels(event.code).inc()
        try:
            await self._emit_to_client(event)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %s: event not delivered (%s)", self.id, exc)
