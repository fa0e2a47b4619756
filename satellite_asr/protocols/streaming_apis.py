"""What the hosted services' streaming APIs served here (Deepgram's live API and Flux, AssemblyAI's
Universal-Streaming, ElevenLabs' and Soniox's realtime APIs) share: a WebSocket whose URL query
sets the stream (or, Soniox's, its first message), one session for the connection fed the client's
raw audio, and the stream's end by the client or the server.

Each API is an `Api`: its path, how its query is read, how it refuses, and its `StreamingConnection`,
which turns session events into the API's own messages. `StreamingApiHandler` serves any of them.
The checks of a query's parameters serve Deepgram's pre-recorded API too.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, final

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.access import SUBPROTOCOL, error_response
from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import (
    FinalTranscript,
    PartialTranscript,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
)
from satellite_asr.limits import ConnectionLimit, TooManyConnections, write_within
from satellite_asr.protocols import (
    WEBSOCKET_ENDS,
    FirstMessageWait,
    PcmInput,
    ProtocolError,
    ReadAhead,
    accepted,
    checked_biasing,
    client_gone,
    echoable,
    json_object,
    open_session,
    read_ahead_response,
)
from satellite_asr.session import SessionOptions

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
"""Largest client message, as on `/v1/stream`: these APIs' clients send 20-250 ms of audio at a time."""
BOOLEAN_VALUES = {"true": True, "false": False}
MAX_DIGITS = 12
"""Most digits of a whole-number parameter (zeros in front included): `int` refuses over 4300."""


class StreamParams(Protocol):
    """What a stream's settings give, whichever API read them."""

    def decoder(self) -> PcmDecoder: ...

    def session_options(self, core: Core) -> SessionOptions: ...


class ParameterError(ValueError):
    """A query parameter the stream cannot start with: the parameter and a sentence."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter

    @classmethod
    def of(cls, exc: ProtocolError, parameter: str) -> ParameterError:
        """A shared check's `ProtocolError` as the query's: the parameter it names (else `parameter`)
        and its sentence, without that name in front again."""
        named = exc.param or parameter
        return cls(named, exc.message.removeprefix(f"{named}: "))


def check_names(query: MultiMapping[str], known: set[str], repeatable: set[str]) -> None:
    """`ParameterError` for a parameter not `known` (nor the daemon's own `api_key`), or given twice
    and not `repeatable`."""
    for name in query:
        if name not in known and name != "api_key":
            raise ParameterError(name, f"unknown query parameter {name!r}")
        if name not in repeatable and len(query.getall(name)) > 1:
            raise ParameterError(name, f"{name} is given {len(query.getall(name))} times; give it once")


def refuse_features(query: Mapping[str, str], when_on: Mapping[str, str], when_given: Mapping[str, str]) -> None:
    """`ParameterError` for a feature this server does not do that the query asks for: one of
    `when_on` set true (`false` is fine), or one of `when_given` at all. Refused rather than left
    silently out, so that no client believes it was applied."""
    for name, feature in when_on.items():
        if boolean_parameter(query, name, False):
            raise ParameterError(name, f"this server does not do {feature}; leave {name} out or set it to false")
    for name, feature in when_given.items():
        if name in query:
            raise ParameterError(name, f"this server does not do {feature}; leave {name} out")


def boolean_parameter(query: Mapping[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() not in BOOLEAN_VALUES:
        raise ParameterError(name, f"{name} must be true or false, got {value!r}")
    return BOOLEAN_VALUES[value.lower()]


def whole_parameter(query: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None:
        return default
    if not ascii_digits(value) or len(value) > MAX_DIGITS or not low <= int(value) <= high:
        raise ParameterError(name, f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def fraction_parameter(query: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not value.isascii() or not low <= number <= high:  # nan fails the comparison
        raise ParameterError(name, f"{name} must be a number from {low} to {high}, got {value!r}")
    return number


def ascii_digits(value: str) -> bool:
    """Whether `value` is ASCII digits: `str.isdigit` also says yes to '²' (which `int` refuses)
    and to other scripts' digits ('١٦٠٠٠'), which no client means as a number here."""
    return value.isascii() and value.isdigit()


def number_within(value: object, low: float, high: float, whole: bool) -> bool:
    """Whether `value` is a JSON number (a whole one if `whole`) from `low` to `high`; true is not 1."""
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


def confidence(event: FinalTranscript) -> float:
    """How sure the engine was of a final's text, per token on average; 0 where it does not say."""
    return round(math.exp(event.avg_logprob), 4) if event.avg_logprob is not None else 0.0


def replacing_terms(core: Core, value: object, param: str) -> tuple[str, ...]:
    """A client's new list of names and terms (a text is a list of one), stripped, within the
    limits: else `ProtocolError`, `invalid_type` or (over a limit) `context_too_long`."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ProtocolError("invalid_type", f"{param} must be a list of texts", param=param)
    terms = tuple(term.strip() for term in items if term.strip())
    checked_biasing(core, "", terms, param, param)
    return terms


def is_control(message: WSMessage, kind: str, type_field: str = "type") -> bool:
    """Whether a message is the control message `kind` (a JSON object of that `type_field`)."""
    if message.type != WSMsgType.TEXT:
        return False
    parsed = json_object(message.data)
    return isinstance(parsed, dict) and parsed.get(type_field) == kind


def control_message(data: str, code: str, type_field: str) -> tuple[object, dict[str, Any]]:
    """A text message's type (its `type_field`) and the message, or `ProtocolError` `code` when it
    is not a JSON object."""
    message = json_object(data)
    if isinstance(message, str):
        raise ProtocolError(code, f"text messages must be JSON objects; this one {message}")
    return message.get(type_field), message


def check_fields(message: dict[str, Any], kind: str, fields: set[str], type_field: str = "type") -> None:
    """`invalid_message` for a field the control message `kind` does not have, rather than one
    silently left unused (Speechmatics', Mistral's)."""
    unknown = sorted(set(message) - fields - {type_field})
    if unknown:
        raise ProtocolError("invalid_message", f"{kind} has no field {echoable(unknown[0])!r}")


def base64_audio(message: dict[str, Any], kind: str, max_bytes: int, field: str = "audio") -> bytes:
    """The audio a JSON audio message (`kind`: Mistral's `input_audio.append`, Gradium's `audio`)
    carries base64 in its `field` (Inworld's `audioChunk`: `content`), at most `max_bytes` decoded;
    else `invalid_audio`, its sentence naming that field."""
    audio = message.get(field)
    if not isinstance(audio, str):
        raise ProtocolError("invalid_audio", f"{kind}'s {field} must be base64 PCM")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_audio", f"{kind}'s {field} is not valid base64") from None
    if len(data) > max_bytes:
        raise ProtocolError("invalid_audio", f"{kind} holds {len(data)} bytes of audio; at most {max_bytes}")
    return data


Control = Callable[[dict[str, Any]], Awaitable[None]]
"""What a control message does, given the message."""


async def keep_alive(message: dict[str, Any]) -> None:
    """Nothing to do: the stream is alive while the connection is."""


class PendingFinals:
    """The utterances whose final is not sent yet, and the partials held behind them. For the APIs
    whose messages name no utterance (ElevenLabs', Soniox's, Cartesia's, Deepgram's live API): with
    two decodes at once the next utterance's partials come while the final before it decodes, and
    sent then a client would take the next command's words for the end of the last."""

    def __init__(self) -> None:
        self.starts: dict[int, float] = {}
        """Where each utterance whose final has not been sent began."""
        self.held: dict[int, str] = {}
        """The latest partial with words of each utterance heard while one before it awaits its final."""
        self.shown: set[int] = set()
        """The utterances whose final is not sent yet of which a partial with words was sent."""
        self.announced = 0
        """The last utterance whose start `announce` gave."""

    def started(self, event: SpeechStarted) -> None:
        self.starts[event.utterance_id] = event.start

    def announce(self) -> float | None:
        """Where the first utterance whose final is not sent began, the first time it is asked for,
        else None: for an API that tells of speech starting, asked at each start and after each
        final, so that a later utterance's start waits for the final before it as its partials do
        (a client would end the turn still being spoken on that earlier final)."""
        first = min(self.starts, default=0)
        if first <= self.announced:
            return None
        self.announced = first
        return self.starts[first]

    def holds(self, event: PartialTranscript) -> bool:
        """Whether the partial waits for the final of an utterance before it (kept, replacing the
        one held before it)."""
        if any(earlier < event.utterance_id for earlier in self.starts):
            self.held[event.utterance_id] = event.text
            return True
        return False

    def final(self, utterance_id: int) -> bool:
        """The utterance's final is being sent: it awaits nothing more, and holds back nothing.
        Whether a partial of it with words was sent: then its final takes that back, even empty."""
        self.starts.pop(utterance_id, None)
        self.held.pop(utterance_id, None)
        shown = utterance_id in self.shown
        self.shown.discard(utterance_id)
        return shown

    def released(self) -> list[tuple[int, str]]:
        """The held partials no final still holds back, by utterance in order, with their utterances:
        to be sent now, after the final that held them."""
        free = []
        for later in sorted(self.held):
            if any(earlier < later for earlier in self.starts):
                break
            free.append((later, self.held.pop(later)))
        return free


class StreamingConnection(abc.ABC):
    """One client of an API: one session for the connection, fed the client's audio; the messages
    each API sends are its own."""

    protocol: ClassVar[str]
    invalid_message: ClassVar[str]
    """The API's code for a text message that is not one of its controls."""
    type_field: ClassVar[str] = "type"
    """The field of a text message that names it: ElevenLabs' is `message_type`."""
    idle_means_missing_audio: ClassVar[bool] = False
    """`SessionOptions.idle_means_missing_audio`: True for an API whose clients do not reconnect
    after the idle timeout (a voice agent's stream would be deaf for the rest of its call), so that a
    client streaming at a microphone's pace is never idle, however long nobody speaks."""
    errors_end_stream: ClassVar[bool] = False
    """Whether every error ends the stream (Soniox's, Speechmatics'): then a message refused gets
    the finals of the audio before it first (`finish_audio`), and bad audio is not "dropped"."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        self.ws = ws
        self.core = core
        self.request = request
        self.transport = request.transport
        self.reading = reading
        self.params = params
        """None until `read_settings` reads them, for an API whose settings come in the first message."""
        self.request_id = str(uuid.uuid4())
        self.input: PcmInput | None = None
        self.finished = False
        """The client ended the stream, or the server did: the handler stops reading."""
        self.flushed_from: int | None = None
        """While the client's flush (`flush_for_client`) is under way, the first utterance it may end:
        the one in progress, or speech not yet confirmed that the flush makes one; not one the length
        cap ended before, whose final may still be decoding."""
        self.flush_answered = False
        """A final of the flush under way (or the last) answered it (`answers_flush`)."""
        self.emitting = asyncio.Lock()
        """Held while one session event's messages are written (`emit`)."""

    @property
    def seconds(self) -> float:
        return self.input.session.seconds_received if self.input is not None else 0.0

    async def send(self, message: dict[str, Any]) -> None:
        """Raises `SlowClient` (a `ConnectionError`) and drops the client when it does not read."""
        if not self.ws.closed:
            await write_within(self.ws.send_json(message), self.core.settings.write_timeout_s, self.transport)

    async def close(self, code: int, reason: str = "") -> None:
        await self.reading.close(code, reason)

    def open_session(self) -> None:
        assert self.params is not None
        session = open_session(
            self.core,
            self.protocol,
            dataclasses.replace(
                self.params.session_options(self.core), idle_means_missing_audio=self.idle_means_missing_audio
            ),
            self.emit,
            self.close_by_server,
            arriving=self.reading.arriving,
        )
        self.input = PcmInput(self.core, session, self.params.decoder(), self.transport)

    async def on_binary(self, data: bytes) -> None:
        assert self.input is not None
        try:
            await self.input.feed(data)
        except ProtocolError as exc:
            if not self.errors_end_stream:
                raise
            await self.finish_audio()
            raise ProtocolError(exc.code, exc.message.removeprefix("frame dropped: ")) from None

    @abc.abstractmethod
    async def opened(self) -> None:
        """What the API sends once the session is open."""

    async def read_settings(self, message: WSMessage) -> None:
        """The stream's settings from its first message, for an API whose URL does not carry them
        (`Api.parse` gave None): sets `params` and opens the session, or raises `ProtocolError`."""
        raise NotImplementedError(f"{self.protocol}'s settings come in its URL")

    async def release(self, reason: str) -> None:
        """The client left: what is in flight is cancelled (after `end`, nothing is)."""
        if self.input is not None:
            await self.core.sessions.release(self.input.session, reason, finalize=False)

    async def close_by_server(self, reason: str) -> None:
        """The server ends the stream (idle timeout, shutdown) once its finals are sent: `closing`, then 1001."""
        self.finished = True
        with contextlib.suppress(ConnectionError):
            await self.closing()
        await self.close(WSCloseCode.GOING_AWAY, reason)

    def server_close_sentence(self, reason: str) -> str:
        """The sentence telling the client why the server ended its stream (for the APIs that say it)."""
        timeout = self.core.settings.idle_timeout_s
        if self.idle_means_missing_audio:
            idle = f"the audio fell {timeout:g} s behind real time since the last speech (idle_timeout_s)"
        else:
            idle = f"no speech was heard for {timeout:g} s (idle_timeout_s)"
        return {
            "idle_timeout": idle,
            "shutdown": "the server is shutting down; start a new session",
        }.get(reason, reason)

    async def end(self) -> None:
        """The client ends the stream: the finals still to come, `closing`, then the Close."""
        self.finished = True
        await self.finish_stream()
        await self.close(WSCloseCode.OK)

    async def finish_stream(self) -> None:
        """The finals still to come of the audio the client sent, then `closing`."""
        if self.input is not None:
            await self.input.drain()
            await self.core.sessions.release(self.input.session, "end", finalize=True)
        await self.closing()

    async def receive(self) -> WSMessage:
        """The client's next message for the handler (Azure's, between its turns, within a time)."""
        return await self.reading.receive()

    async def server_ended(self) -> bool:
        """The server ended the session (idle timeout, shutdown) and a message came: the session's
        finals and the server's Close first; whether the connection is over (Azure's goes on with
        its next turn, of which the message may be the first)."""
        assert self.input is not None
        await self.core.sessions.release(self.input.session, "closed by the server", finalize=True)
        return True

    @abc.abstractmethod
    async def closing(self) -> None:
        """What the API sends last, before the Close."""

    @final
    async def emit(self, event: SessionEvent) -> None:
        """A session event as the API's messages (`send_event`), one event's at a time: the session's
        tasks emit at once (the final of one utterance from its decode, the next one's partials and
        VAD events), and the messages of one, decided while another's were still being written, went
        out among them (a newer partial before the older one a final released, a stale interim last).

        Nothing `send_event` awaits waits for the session (its flush, its close, its finals): those
        are the handler's (a control, the end of the stream) or tasks of their own (Azure's turn
        ended at its phrase), and they take no turn here, so the final they wait for gets its turn.
        A failed write (a client that does not read) gives the turn up with its `SlowClient`; a
        session that is cancelled cancels its emits, waiting or not. Final: an API's messages are its
        `send_event`, so that none of them goes around the lock."""
        async with self.emitting:
            await self.send_event(event)

    @abc.abstractmethod
    async def send_event(self, event: SessionEvent) -> None:
        """The API's messages for a session event (`emit` gives one event at a time)."""

    async def on_text(self, data: str) -> None:
        """A control message done (`controls`); `ProtocolError` `invalid_message` for one the API
        does not have, or a text that is not a JSON object."""
        try:
            await self.control(data)
        except ProtocolError:
            if self.errors_end_stream:
                await self.finish_audio()
            raise

    async def control(self, data: str) -> None:
        """`on_text`'s work: the control message `data` names, done."""
        kind, message = control_message(data, self.invalid_message, self.type_field)
        controls = self.controls()
        control = controls.get(kind) if isinstance(kind, str) else None
        if control is None:
            *others, last = controls
            expected = f"{', '.join(others)} or {last}" if others else last
            problem = f"unknown {self.type_field} {echoable(str(kind))!r}"
            if kind is None:  # a second configuration, say: "unknown type 'None'" told nothing
                problem = f"the message has no {self.type_field}"
            raise ProtocolError(self.invalid_message, f"{problem}; expected {expected}")
        await control(message)

    @abc.abstractmethod
    def controls(self) -> dict[str, Control]:
        """The API's control messages, by `type`."""

    async def flush_for_client(self) -> bool:
        """The utterance in progress ends now at the client's word (Deepgram's `Finalize`, ElevenLabs'
        commit, Soniox's `finalize`), its final sent before this returns; whether one of the finals
        it brought answered the client (`answers_flush`): an API whose client waits for the answer
        sends an empty one when none did. The resampler's tail is fed first: it is the utterance's
        last milliseconds."""
        assert self.input is not None
        await self.input.drain()
        session = self.input.session
        self.flushed_from = session.utterances if session.in_utterance else session.utterances + 1
        self.flush_answered = False
        try:
            await session.flush()
        finally:
            self.flushed_from = None
        return self.flush_answered

    def answers_flush(self, utterance_id: int) -> bool:
        """Whether this utterance's final is one the client's flush ended, and so answers it; each
        final is asked once, as it is sent."""
        answers = self.flushed_from is not None and utterance_id >= self.flushed_from
        self.flush_answered = self.flush_answered or answers
        return answers

    async def finish_audio(self) -> None:
        """Before the error that ends the stream, the finals of the audio that came before it: a bad
        message loses nothing else (Soniox's and Speechmatics' errors end the stream). None between
        Azure's turns: no audio."""
        if self.input is None:
            return
        await self.input.drain()
        await self.core.sessions.release(self.input.session, "error", finalize=True)

    async def end_now(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now: its final comes as the daemon's endpointing would send it."""
        assert self.input is not None
        await self.input.flush()

    async def end_stream(self, message: dict[str, Any]) -> None:
        await self.end()

    @abc.abstractmethod
    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """A refusal or failure in the API's own shape, counted in the error metric unless `counted`
        already (a session's `SessionError`: `Session._emit` counts it); `fatal`: the connection is closed next."""


class InOrderConnection(StreamingConnection):
    """A client of an API whose messages name no utterance (ElevenLabs', Soniox's, Cartesia's,
    Speechmatics', Gladia's, Mistral's, Azure's): each utterance's partials and final go out in audio order, a partial
    heard while the final before it decodes held back for that final (`PendingFinals`)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        self.pending = PendingFinals()
        self.failed = False
        """Set by an API whose errors end the stream: nothing is sent after its error."""

    async def send_event(self, event: SessionEvent) -> None:
        if self.failed:
            return
        if isinstance(event, SpeechStarted):
            await self.speech_started(event)
        elif isinstance(event, SpeechStopped):
            await self.speech_stopped(event)
        elif isinstance(event, PartialTranscript):
            if event.text.strip() and self.partials_wanted() and not self.pending.holds(event):
                await self.send_partial(event.utterance_id, event.text)
        elif isinstance(event, FinalTranscript):
            await self.final(event)
        elif isinstance(event, SessionError):
            await self.error(event.code, event.message, counted=True)

    async def speech_started(self, event: SpeechStarted) -> None:
        self.pending.started(event)

    async def speech_stopped(self, event: SpeechStopped) -> None:
        """Nothing, unless the API tells of the end of speech (Gladia's `speech_end`)."""

    def partials_wanted(self) -> bool:
        """Whether the client asked for partials (Speechmatics' `enable_partials`)."""
        return True

    async def send_partial(self, utterance_id: int, text: str) -> None:
        self.pending.shown.add(utterance_id)
        await self.partial(utterance_id, text)

    async def release_held(self) -> None:
        """After a final, the partials of the utterances after it that it held back."""
        for later, text in self.pending.released():
            await self.send_partial(later, text)

    @abc.abstractmethod
    async def partial(self, utterance_id: int, text: str) -> None:
        """The API's message for a partial with words of the utterance."""

    @abc.abstractmethod
    async def final(self, event: FinalTranscript) -> None:
        """The API's messages for the utterance's final (`pending.final` tells whether a partial of
        it was sent), then `release_held`."""


class ErrorEventConnection(InOrderConnection):
    """A client of an API whose every error is one message in its own shape and leaves the stream
    going (xAI's, Smallest AI's, Sarvam AI's; Gradium's, Meta's, Baseten's and Simplismart's once
    their settings are taken): the server ending the stream (idle timeout, shutdown) is that error
    with the sentence, then the Close 1001."""

    @abc.abstractmethod
    def error_message(self, code: str, message: str) -> dict[str, Any]:
        """The API's error message."""

    async def close_by_server(self, reason: str) -> None:
        """Once the finals are sent: the error telling why, then 1001."""
        self.finished = True
        try:
            await self.error(reason, self.server_close_sentence(reason), counted=True)
        finally:
            await self.close(WSCloseCode.GOING_AWAY, reason)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """The API's error; the stream goes on (an engine failure loses its utterance alone)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        await self.send(self.error_message(code, message))


class SettingsMessageConnection(ErrorEventConnection):
    """A client of an API whose settings come in the stream's first message (Gradium's `setup`,
    Meta's handshake, Baseten's metadata, Simplismart's configuration): a refused one is the error,
    then the Close (its code by error code in `refusal_closes`, any other 1008), before any
    session; any later error leaves the stream going."""

    refusal_closes: ClassVar[Mapping[str, int]] = {
        "idle_timeout": WSCloseCode.GOING_AWAY,
        "shutdown": WSCloseCode.GOING_AWAY,
    }
    """The server ending a stream before its session (shutdown, idle timeout) closes 1001, as it does
    mid-stream; an API may map its own codes."""

    @abc.abstractmethod
    def parse_settings(self, message: WSMessage) -> StreamParams:
        """The stream's settings from its first message, or `ProtocolError`."""

    async def read_settings(self, message: WSMessage) -> None:
        """The settings (the key was checked at the upgrade, or is in them), the session, then `opened`."""
        self.params = self.parse_settings(message)
        self.open_session()
        await self.opened()

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        await super().error(code, message, fatal=fatal, counted=counted)
        if self.input is None and not fatal:
            await self.close(self.refusal_closes.get(code, WSCloseCode.POLICY_VIOLATION), code)


async def refuse_in_band(
    core: Core,
    request: web.Request,
    ws: web.WebSocketResponse,
    error: dict[str, Any] | None,
    code: int,
    ends_stream: Callable[[WSMessage], bool],
    reason: str = "invalid_query_parameter",
) -> web.StreamResponse:
    """A bad query refused after the upgrade (AssemblyAI's way, and ElevenLabs'): the API's `error`
    message, which the clients report (an HTTP refusal they would report by its status alone), then
    the Close with `code` and `reason` (an API with no error message, Azure's USP: the Close alone,
    its reason the sentence)."""
    if not await accepted(ws, request):
        return client_gone()
    reading = ReadAhead(ws, core.settings, request.transport, ends_stream)
    with contextlib.suppress(ConnectionError):
        if error is not None:
            await write_within(ws.send_json(error), core.settings.write_timeout_s, request.transport)
        await reading.close(code, reason)
    return ws


def refusing_in_band(
    error_event: Callable[[str, str], dict[str, Any]], ends_stream: Callable[[WSMessage], bool]
) -> ParametersRefused:
    """How an API refuses a bad query after the upgrade: its `error_event` naming the parameter, then
    the Close 1008 (the clients report the error's sentence, an HTTP refusal by its status alone)."""

    async def refuse(
        core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
    ) -> web.StreamResponse:
        error = error_event("invalid_query_parameter", f"{exc.parameter}: {exc}")
        return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, ends_stream)

    return refuse


ApiParser = Callable[[MultiMapping[str], Core], StreamParams | None]
"""The stream's settings from the URL's query; None when they come in the first message instead."""
ParametersRefused = Callable[[Core, web.Request, web.WebSocketResponse, ParameterError], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Api:
    """One streaming API: its path, how its query is read and refused, and its connections."""

    path: str
    name: str
    """For the 426 of a plain GET: "Deepgram's live streaming API"."""
    parse: ApiParser
    connection: type[StreamingConnection]
    ends_stream: Callable[[WSMessage], bool]
    """Whether a message ends the stream: what the client sent before its Close is still wanted then."""
    refuse_parameters: ParametersRefused
    """How a bad query is answered: before the upgrade, or (as AssemblyAI does) after it, in band."""
    subprotocol: str = SUBPROTOCOL
    """The WebSocket subprotocol answered: the daemon's, or the API's own (Azure's `USP`), the
    daemon's still answered to a client that offers it (a browser sending its key as a subprotocol)."""

    @property
    def protocol(self) -> str:
        return self.connection.protocol


class StreamingApiHandler:
    """aiohttp handler for one API; `Access` has checked Host, Origin and key before it runs."""

    def __init__(self, core: Core, api: Api) -> None:
        self.core = core
        self.api = api
        settings = core.settings
        self.connections = ConnectionLimit(
            api.protocol,
            settings.max_websocket_connections,
            settings.max_connections_per_address,
            total_setting="max_websocket_connections",
        )
        self.serving: set[StreamingConnection] = set()
        """The connections being served: those with no session (settings due in the first message not
        come yet, an Azure connection between turns) have none for shutdown to end (`close_awaiting`)."""

    async def close_awaiting(self, reason: str) -> None:
        """Shutdown: the connections still awaiting their settings are closed as the server closes a
        stream; one whose client is gone (its write fails) stops neither the others nor the shutdown.
        One whose session opened meanwhile (an Azure turn's first audio still being read) is left to
        the session's close, which sends the finals of its audio first."""
        awaiting = [connection for connection in self.serving if connection.input is None and not connection.finished]
        closing = (connection.close_by_server(reason) for connection in awaiting)
        await asyncio.gather(*closing, return_exceptions=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # the daemon's own beside the API's: a browser sending its key as a subprotocol offers it
        ws = read_ahead_response(MAX_MESSAGE_BYTES + 1, *dict.fromkeys((self.api.subprotocol, SUBPROTOCOL)))
        if not ws.can_prepare(request).ok:
            message = f"this endpoint speaks {self.api.name} over WebSocket; connect a WebSocket client"
            upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
            return error_response(self.api.path, 426, "websocket_required", message, upgrade)
        try:
            # the slot is taken first: AssemblyAI's API refuses a bad query on the upgraded connection
            with self.connections.opened(request.remote or ""):
                try:
                    params = self.api.parse(request.query, self.core)
                except ParameterError as exc:
                    self.core.metrics.errors.labels("invalid_query_parameter").inc()
                    return await self.api.refuse_parameters(self.core, request, ws, exc)
                return await self._serve(request, ws, params)
        except TooManyConnections as exc:
            self.core.metrics.errors.labels("too_many_connections").inc()
            return error_response(self.api.path, 503, "too_many_connections", str(exc), {"Retry-After": "5"})

    async def _read_settings(self, connection: StreamingConnection, reading: ReadAhead) -> None:
        """The stream's settings, its first message, within `first_message_timeout_s` (the connection
        holds a slot meanwhile); else the API's error and the Close, and `connection.finished`."""
        waiting = FirstMessageWait(reading, self.core.settings.first_message_timeout_s)
        try:
            message = await waiting.receive()
            if message is None:
                connection.finished = True
                await connection.error("timeout", waiting.expired("configuration"))
            elif message.type in WEBSOCKET_ENDS:
                connection.finished = True
            else:
                await connection.read_settings(message)
        except ProtocolError as exc:
            if exc.fatal:
                raise
            connection.finished = True
            await connection.error(exc.code, exc.message)

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, params: StreamParams | None
    ) -> web.StreamResponse:
        if not await accepted(ws, request):
            return client_gone()
        reading = ReadAhead(ws, self.core.settings, request.transport, self.api.ends_stream)
        connection = self.api.connection(ws, self.core, request, reading, params)
        reason = "disconnect"
        try:
            try:
                if params is not None:
                    connection.open_session()
                    await connection.opened()
                self.serving.add(connection)
                async with reading:
                    if params is None:
                        await self._read_settings(connection, reading)
                    while not connection.finished:
                        message = await connection.receive()
                        if message.type in WEBSOCKET_ENDS or connection.finished:
                            break
                        # the server ended the session (idle timeout, shutdown): its finals, then Close
                        ended = connection.input is not None and connection.input.session.closed
                        if ended and await connection.server_ended():
                            break
                        try:
                            if message.type == WSMsgType.TEXT:
                                await connection.on_text(message.data)
                            elif message.type == WSMsgType.BINARY:
                                await connection.on_binary(message.data)
                        except ProtocolError as exc:
                            if exc.fatal:
                                raise
                            await connection.error(exc.code, exc.message)
                        if connection.finished:
                            reason = "end"
                            break
                if ws.exception() is not None:
                    log.info("%s websocket closed with error: %s", self.api.protocol, ws.exception())
            except ProtocolError as exc:  # fatal: no session could be opened
                await connection.error(exc.code, exc.message, fatal=True)
                await connection.close(WSCloseCode.TRY_AGAIN_LATER, exc.code)
        except ConnectionError as exc:  # SlowClient included: the connection is gone already
            log.info("%s websocket dropped: %s", self.api.protocol, exc)
        finally:
            self.serving.discard(connection)
            await connection.release(reason)
            with contextlib.suppress(ConnectionError):  # when another task is closing, its close ends first
                await connection.close(WSCloseCode.OK)
        return ws
