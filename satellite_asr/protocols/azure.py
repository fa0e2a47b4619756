"""Azure AI Speech's real-time speech-to-text protocol, USP (docs/azure.md): wire messages <-> `Session`
calls, so that Microsoft's Speech SDK (and LiveKit's and Pipecat's Azure plugins, built on it) reach
the daemon by its host alone.

USP frames every message with HTTP-like headers: a text message is `Name:value` lines, a blank line
and a JSON body; an audio message is binary, a 2-byte big-endian header length, the headers, the
audio. The client sends `speech.config` and `speech.context` (its phrase list), then the turn's
audio under one `X-RequestId`, the first chunk a WAV header giving the format, an empty chunk
ending it. The session opens with that first chunk and `turn.start` answers. Each utterance is
`speech.startDetected`, `speech.hypothesis` partials, `speech.endDetected` and one `speech.phrase`
(offsets in 100-ns ticks); `turn.end` ends the turn. The connection then takes the next turn, as
Azure's does: its own messages under a new `X-RequestId`, its own session and offsets. On the
interactive path (the SDK's `recognize_once`) the first phrase, `NoMatch` too, ends the turn; on
the conversation and dictation paths (continuous recognition) every utterance is a phrase until
the audio ends; on the universal paths `speech.context` says which (with the language and format
the query carries on the other paths).
USP has no error message: a refusal is the Close, 1007 with a sentence for what the client sent (the SDK reports it as
`BadRequest` with the sentence), 1011 for the server's side, after the finals of the audio before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.http import WS_CLOSED_MESSAGE
from multidict import MultiMapping

from satellite_asr.access import AZURE_PATHS
from satellite_asr.audio import AudioFormatError, PcmDecoder, wav_stream_format
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SessionError, SessionEvent
from satellite_asr.limits import write_within
from satellite_asr.protocols import (
    WEBSOCKET_ENDS,
    FirstMessageWait,
    ProtocolError,
    ReadAhead,
    close_reason,
    echoable,
)
from satellite_asr.protocols.iso639 import engine_language
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    PendingFinals,
    StreamParams,
    boolean_parameter,
    check_names,
    confidence,
    refuse_in_band,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import Session, SessionOptions

PROTOCOL = "azure"
INTERACTIVE_PATH = "/speech/recognition/interactive/cognitiveservices/v1"
"""The SDK's `recognize_once`: one phrase, then `turn.end`."""
UNIVERSAL_PATHS = {"/speech/universal/v2", "/stt/speech/universal/v2"}
"""The paths of both modes, the mode in `speech.context`: the Python SDK's, with no query (its language
and format in `speech.context` too: `context_settings`), and the JavaScript SDK's."""
PATHS = tuple(sorted(AZURE_PATHS))
"""With the interactive path, continuous recognition's: the SDK's conversation and dictation paths,
and the universal ones a `SpeechConfig` endpoint of Azure's current form names."""
QUERY = {
    "language",
    "format",
    "profanity",
    "initialSilenceTimeoutMs",
    "endSilenceTimeoutMs",
    "storeAudio",
    "wordLevelConfidence",
    "wordLevelTimestamps",
    "stableIntermediateThreshold",
    "postprocessing",
    "X-ConnectionId",
    "connectionId",
    "Ocp-Apim-Subscription-Key",
    "Authorization",
}
"""The query the SDK sends: `language` and `format` are used, the rest checked and not applied
(the JavaScript SDK's connection id, twice, and its key, which access.py checks, come in it too;
the SDK asks for `wordLevelTimestamps` with the detailed format; `NBest` has no `Words`: the
engine gives no word timings; `postprocessing=TrueText`, LiveKit's `true_text_post_processing`,
asks for display text, which every phrase already is)."""
FORMATS = {"simple", "detailed"}
PROFANITY = {"masked", "removed", "raw"}
REFUSED_QUERY = {
    "cid": "custom speech models",
    "lidEnabled": "language identification",
    "punctuation": "spoken punctuation (LiveKit's explicit_punctuation)",
}
TICKS_PER_SECOND = 10_000_000
"""USP's offsets and durations are in 100-ns ticks."""
CLIENT_PATHS = {"speech.config", "speech.context", "telemetry"}
"""The text messages a client sends (`audio` is binary)."""
SERVER_SIDE = {"shutdown", "server_busy", "engine_error"}
"""The errors that are the server's, closed with 1011; every other is the client's, closed with 1007."""
MAX_STABILITY = 100
"""The most recognitions `stableIntermediateThreshold` may ask a word to hold: checked, not applied."""
MAX_SILENCE_MS = 3_600_000
"""The longest silence timeout taken (an hour): the query's are checked, not applied."""
REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
"""What a turn's `X-RequestId` may be (the SDK's are 32 hex digits): it is echoed in every message
the daemon sends, so a line break or a long value in it is refused rather than repeated."""


@dataclass(frozen=True)
class UrlSettings:
    """What the query sets."""

    language: str | None
    detailed: bool


def url_settings(query: MultiMapping[str], core: Core) -> UrlSettings:
    """The query checked: `ParameterError` for what the stream cannot start with."""
    check_names(query, QUERY | set(REFUSED_QUERY), set())
    for name, feature in REFUSED_QUERY.items():
        if name in query:
            raise ParameterError(name, f"this server does not do {feature}; leave {name} out")
    output = query.get("format", "simple").lower()
    if output not in FORMATS:
        raise ParameterError("format", f"format must be simple or detailed, got {echoable(output)!r}")
    if query.get("profanity", "masked").lower() not in PROFANITY:
        raise ParameterError("profanity", "profanity must be masked, removed or raw")
    if query.get("postprocessing", "TrueText").lower() != "truetext":
        raise ParameterError("postprocessing", "postprocessing must be TrueText")
    whole_parameter(query, "stableIntermediateThreshold", None, 1, MAX_STABILITY)
    for name in ("storeAudio", "wordLevelConfidence", "wordLevelTimestamps"):
        boolean_parameter(query, name, False)
    for name in ("initialSilenceTimeoutMs", "endSilenceTimeoutMs"):
        whole_parameter(query, name, None, 0, MAX_SILENCE_MS)
    for name in ("X-ConnectionId", "connectionId"):
        if name in query and REQUEST_ID.fullmatch(query[name]) is None:
            raise ParameterError(name, f"{name} must be 1 to 64 letters, digits, '-' or '_'")
    try:
        language = engine_language(core, query.get("language"), "language")
    except ProtocolError as exc:
        raise ParameterError("language", exc.message) from None
    return UrlSettings(language, output == "detailed")


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the audio's format comes in its first chunk, the phrase list in `speech.context`."""
    url_settings(query, core)
    return None


@dataclass(frozen=True)
class AzureParams:
    """The stream's settings once its first audio has come."""

    encoding: str
    sample_rate: int
    language: str | None
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(self.encoding, self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


@dataclass(frozen=True)
class UspMessage:
    """A client message: its headers (names lowercased) and its body."""

    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.headers.get("path", "")


def usp_headers(text: str) -> dict[str, str]:
    headers = {}
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if line and not colon:
            raise ProtocolError("invalid_message", f"the header line {echoable(line[:40])!r} has no ':'")
        if line:
            headers[name.strip().lower()] = value.strip()
    return headers


def parse_message(message: WSMessage) -> UspMessage:
    """A USP message's headers and body, or `ProtocolError` `invalid_message`."""
    if message.type == WSMsgType.TEXT:
        head, blank, body = message.data.partition("\r\n\r\n")
        if not blank:
            raise ProtocolError("invalid_message", "a text message is headers, a blank line, then the body")
        return UspMessage(usp_headers(head), body.encode("utf-8", "surrogatepass"))
    data = message.data
    if len(data) < 2 or 2 + int.from_bytes(data[:2], "big") > len(data):
        raise ProtocolError("invalid_message", "a binary message is a 2-byte header length, the headers, the audio")
    length = int.from_bytes(data[:2], "big")
    try:
        head = data[2 : 2 + length].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("invalid_message", "a binary message's headers must be ASCII") from None
    return UspMessage(usp_headers(head), data[2 + length :])


def wav_format(header: bytes) -> tuple[str, int, bytes]:
    """A turn's WAV header's encoding and rate, and the audio after it; `ProtocolError` `invalid_audio`
    for a header this server cannot read or a format it does not take (`wav_stream_format`), or more
    than one channel (Azure's rule)."""
    try:
        read = wav_stream_format(header)
    except AudioFormatError as exc:
        raise ProtocolError("invalid_audio", str(exc)) from None
    if read is None:
        raise ProtocolError("invalid_audio", "the first audio chunk's WAV header has no fmt and data chunks")
    encoding, rate, channels, audio = read
    if channels != 1:
        raise ProtocolError("invalid_audio", f"this server takes one channel; the WAV header gives {channels} channels")
    return encoding, rate, audio


def phrase_list(context: object, core: Core) -> tuple[str, ...]:
    """`speech.context`'s phrase list (`dgi.Groups[].Items[].Text`, generic groups only) as terms."""
    if not isinstance(context, dict):
        raise ProtocolError("invalid_message", "speech.context's body must be a JSON object")
    dgi = context.get("dgi")
    if dgi is None:
        return ()
    groups = dgi.get("Groups", []) if isinstance(dgi, dict) else None
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ProtocolError("invalid_message", "speech.context's dgi.Groups must be a list of objects")
    texts: list[object] = []
    for group in groups:
        if group.get("Type", "Generic") != "Generic":
            raise ProtocolError("invalid_message", "this server takes phrase lists only (dgi groups of Type Generic)")
        items = group.get("Items", [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ProtocolError("invalid_message", "a dgi group's Items must be a list of objects")
        texts.extend(item.get("Text") for item in items)
    try:
        return replacing_terms(core, texts, "dgi")
    except ProtocolError as exc:
        raise ProtocolError("invalid_message", exc.message) from None


def ends_stream(message: WSMessage) -> bool:
    """An audio message with no audio: the end of the turn's audio, whose finals are still wanted."""
    if message.type != WSMsgType.BINARY:
        return False
    try:
        return parse_message(message).body == b""
    except ProtocolError:
        return False


def ticks(seconds: float) -> int:
    return round(seconds * TICKS_PER_SECOND)


class AzureConnection(InOrderConnection):
    """A client of USP: its configuration, context and audio; each utterance's hypotheses and phrase."""

    protocol: ClassVar[str] = PROTOCOL
    invalid_message = "invalid_message"
    errors_end_stream = True

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        self.url = url_settings(request.query, core)
        self.query = request.query
        self.universal = request.path in UNIVERSAL_PATHS
        self.single_shot = request.path == INTERACTIVE_PATH
        self.language = self.url.language
        self.detailed = self.url.detailed
        self.turn_id = ""
        """The `X-RequestId` of the turn, from its first audio: kept after the turn, whose late audio it tells."""
        self.turn_done = asyncio.Event()
        """The server ended the turn (the interactive path's phrase, the idle timeout): `receive` stops waiting."""
        self.ending: asyncio.Task[None] | None = None
        """The interactive path's turn end (`end_single_shot`), under way from the phrase's final."""
        self.between: FirstMessageWait | None = None
        """Between turns, the time from the turn's end: messages that start no turn do not put it off."""
        self.new_turn()
        self.awaiting_audio = FirstMessageWait(reading, core.settings.first_message_timeout_s)
        """The time from connecting (from a later turn's first message) for the turn's first audio,
        whatever messages come before it: they do not put it off (no session is held until then)."""

    def new_turn(self) -> None:
        """What a turn holds, empty: nothing of the turn before reaches the next."""
        self.terms: tuple[str, ...] = ()
        self.started: set[int] = set()
        """The utterances whose `speech.startDetected` was sent."""
        self.lost: set[int] = set()
        """The utterances the engine failed to decode: their phrase is `NoMatch`."""
        self.phrases = 0
        self.pending = PendingFinals()
        self.failed = False
        self.turn_over = False
        """The server ended the turn (the interactive path's first phrase, the idle timeout): its audio is dropped."""
        self.turn_done.clear()

    async def end_turn(self) -> None:
        """The turn's session ended and forgotten (the server ended the turn: nothing of it is wanted);
        the connection waits for the next turn."""
        await self.ended_single_shot()
        if self.input is not None:
            await self.core.sessions.release(self.input.session, "end", finalize=False)
            self.input = None
        self.new_turn()

    async def receive(self) -> WSMessage:
        """During a turn, the next message, or none once the server ends the turn; between turns, the
        next message within `idle_timeout_s` of the turn's end, else the Close 1000 `idle_timeout`
        (as the idle timeout's turn end used to close): no session is held meanwhile, and telemetry
        or late audio every few seconds would otherwise hold the connection for ever."""
        if self.input is not None and not self.turn_over:
            reading = asyncio.ensure_future(self.reading.receive())
            ended = asyncio.ensure_future(self.turn_done.wait())
            await asyncio.wait((reading, ended), return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if reading.done():
                return reading.result()
            reading.cancel()  # the message stays read ahead for the wait below
            await asyncio.gather(reading, return_exceptions=True)
        if self.turn_over:
            await self.end_turn()
        if self.between is None:
            self.between = FirstMessageWait(self.reading, self.core.settings.idle_timeout_s)
        message = await self.between.receive()
        if message is None:
            self.finished = True
            await self.close(WSCloseCode.OK, "idle_timeout")
            return WS_CLOSED_MESSAGE
        return message

    async def server_ended(self) -> bool:
        """After the idle timeout's turn end the connection takes the next turn; after shutdown, no more."""
        await super().server_ended()
        if self.finished:
            return True
        await self.end_turn()
        return False

    async def next_turn(self, message: WSMessage) -> None:
        """A message between turns: telemetry is taken, the ended turn's late audio dropped; any other
        starts the next turn, whose audio is due within `first_message_timeout_s` of it."""
        usp = parse_message(message)
        if usp.path == "telemetry" or (
            message.type == WSMsgType.BINARY and usp.headers.get("x-requestid") == self.turn_id
        ):
            return
        self.between = None
        timeout_s = self.core.settings.first_message_timeout_s
        self.awaiting_audio = FirstMessageWait(self.reading, timeout_s, "the turn's first message")
        await self.read_settings(message)

    async def send_usp(self, path: str, body: dict[str, Any]) -> None:
        """A USP text message; raises `SlowClient` (a `ConnectionError`) and drops a client that does not read."""
        headers = f"X-RequestId:{self.turn_id}\r\nPath:{path}\r\nContent-Type:application/json; charset=utf-8"
        if not self.ws.closed:
            text = f"{headers}\r\n\r\n{json.dumps(body)}"
            await write_within(self.ws.send_str(text), self.core.settings.write_timeout_s, self.transport)

    async def read_settings(self, message: WSMessage) -> None:
        """The messages before the turn's first audio (`speech.config`, `speech.context`, `telemetry`),
        all within `first_message_timeout_s` of connecting (a later turn: of its first message); the
        session opens with the audio's first chunk."""
        while message.type not in WEBSOCKET_ENDS:
            usp = parse_message(message)
            if message.type == WSMsgType.BINARY:
                await self.first_audio(usp)
                return
            self.before_audio(usp)
            following = await self.awaiting_audio.receive()
            if following is None:
                raise ProtocolError("timeout", self.awaiting_audio.expired("audio"))
            message = following
        self.finished = True

    def before_audio(self, usp: UspMessage) -> None:
        """A text message before the audio: the phrase list taken from `speech.context`."""
        if usp.path not in CLIENT_PATHS:
            raise ProtocolError(
                "invalid_message",
                f"unknown Path {echoable(usp.path)!r}; expected speech.config, speech.context or audio",
            )
        if usp.path == "speech.context":
            try:
                context = json.loads(usp.body)
            except ValueError:
                raise ProtocolError("invalid_message", "speech.context's body is not JSON") from None
            self.terms = phrase_list(context, self.core)
            self.context_settings(context)

    def context_settings(self, context: dict[str, Any]) -> None:
        """`speech.context`'s `phraseDetection.language` and `phraseOutput.format` where the query
        gives none, and on `/speech/universal/v2` its `phraseDetection.mode` (`INTERACTIVE`:
        single-shot): the SDK sends them there, not in the query, on that path."""
        detection = context.get("phraseDetection")
        detection = detection if isinstance(detection, dict) else {}
        output = context.get("phraseOutput")
        output = output if isinstance(output, dict) else {}
        language = detection.get("language")
        if language is not None and "language" not in self.query:
            try:
                self.language = engine_language(self.core, language, "phraseDetection.language")
            except ProtocolError as exc:
                raise ProtocolError("invalid_message", f"speech.context's {exc.message}") from None
        shape = output.get("format")
        if isinstance(shape, str) and "format" not in self.query:
            self.detailed = shape.lower() == "detailed"
        mode = detection.get("mode")
        if isinstance(mode, str) and self.universal:
            self.single_shot = mode.upper() == "INTERACTIVE"

    async def first_audio(self, usp: UspMessage) -> None:
        """The turn's first audio: its format from the WAV header (none: 16 kHz 16-bit PCM), the session opened."""
        if usp.path != "audio":
            raise ProtocolError("invalid_message", f"a binary message must be Path:audio, not {echoable(usp.path)!r}")
        self.turn_id = usp.headers.get("x-requestid", uuid.uuid4().hex)
        if not REQUEST_ID.fullmatch(self.turn_id):
            raise ProtocolError("invalid_message", "X-RequestId must be 1 to 64 letters, digits, '-' or '_'")
        encoding, rate, audio = "s16le", 16000, usp.body
        if audio.startswith(b"RIFF"):
            encoding, rate, audio = wav_format(audio)
        self.params = AzureParams(encoding, rate, self.language, self.terms)
        try:
            self.open_session()
        except ValueError as exc:  # the decoder's refusal of the rate
            raise ProtocolError("invalid_audio", f"the WAV header's format cannot be taken: {exc}") from None
        await self.opened()
        if audio:
            await super().on_binary(audio)
        elif not usp.body:
            await self.end()

    async def opened(self) -> None:
        await self.send_usp("turn.start", {"context": {"serviceTag": self.request_id}})

    async def on_binary(self, data: bytes) -> None:
        """Audio; a message that is not, refused after the phrases of the audio before it."""
        if self.turn_over:
            await self.end_turn()
        if self.input is None:
            await self.next_turn(WSMessage(WSMsgType.BINARY, data, None))
            return
        try:
            usp = parse_message(WSMessage(WSMsgType.BINARY, data, None))
            if usp.path != "audio":
                raise ProtocolError(
                    "invalid_message", f"a binary message must be Path:audio, not {echoable(usp.path)!r}"
                )
        except ProtocolError:
            await self.finish_audio()
            raise
        if not usp.body:
            await self.end()
        else:
            await super().on_binary(usp.body)

    async def end(self) -> None:
        """The client ends the turn's audio: its phrases and `turn.end`; the connection stays for the next turn."""
        await self.finish_stream()
        await self.ended_single_shot()  # the client's end came with the phrase: its turn.end first
        self.input = None
        self.new_turn()

    async def control(self, data: str) -> None:
        """A text message: during the audio telemetry is taken, anything else refused; after the
        server ended the turn, or between turns, the next turn's (`next_turn`)."""
        message = WSMessage(WSMsgType.TEXT, data, None)
        usp = parse_message(message)
        if usp.path not in CLIENT_PATHS:
            raise ProtocolError("invalid_message", f"unknown Path {echoable(usp.path)!r}; expected telemetry or audio")
        if self.turn_over:
            await self.end_turn()
        if self.input is None:
            await self.next_turn(message)
        elif usp.path != "telemetry":
            raise ProtocolError("invalid_message", f"{usp.path} comes before the turn's audio, not during it")

    def controls(self) -> dict[str, Control]:
        """None: USP's text messages are told apart by their `Path` header (`control`), not a JSON field."""
        return {}

    async def send_event(self, event: SessionEvent) -> None:
        if isinstance(event, SessionError) and event.code == "engine_error" and event.utterance_id is not None:
            self.lost.add(event.utterance_id)  # counted by the session; its final says NoMatch
            return
        await super().send_event(event)

    async def start_detected(self, utterance_id: int, start: float) -> None:
        if utterance_id not in self.started:
            self.started.add(utterance_id)
            await self.send_usp("speech.startDetected", {"Offset": ticks(start)})

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, self.seconds)
        await self.start_detected(utterance_id, start)
        span = {"Offset": ticks(start), "Duration": ticks(max(0.0, self.seconds - start))}
        await self.send_usp("speech.hypothesis", {"Text": text, **span})

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's phrase, when it has words, takes back a hypothesis, or the engine failed on
        it (`NoMatch`); on the interactive path the first phrase, of any status, ends the turn (the
        SDK's `recognize_once` takes the first `speech.phrase` as its result)."""
        shown = self.pending.final(event.utterance_id)
        text = event.text.strip()
        lost = event.utterance_id in self.lost
        self.lost.discard(event.utterance_id)
        phrased = bool(text or shown or lost)
        if phrased:
            await self.start_detected(event.utterance_id, event.start)
            await self.send_usp("speech.endDetected", {"Offset": ticks(event.end)})
            await self.send_usp("speech.phrase", self.phrase(text, event.start, event.end, confidence(event)))
        self.started.discard(event.utterance_id)
        if phrased and self.single_shot:
            self.failed = self.turn_over = True  # nothing more is sent; the rest of the audio is dropped
            assert self.input is not None
            self.ending = asyncio.create_task(self.end_single_shot(self.input.session))
            return
        await self.release_held()

    async def end_single_shot(self, session: Session) -> None:
        """The interactive path's turn, over at its phrase: its session released, then `turn.end`, so
        that the client's next session (another connection's, under `max_sessions`) finds a free slot.
        A task of its own: the release cancels what the session has in flight, the phrase's final too."""
        await self.core.sessions.release(session, "end", finalize=False)
        with contextlib.suppress(ConnectionError):
            await self.send_usp("turn.end", {})
        self.turn_done.set()

    async def ended_single_shot(self) -> None:
        """`end_single_shot` done, before the next turn or the connection's end."""
        ending, self.ending = self.ending, None
        if ending is not None:
            await asyncio.gather(ending, return_exceptions=True)

    async def release(self, reason: str) -> None:
        """The client left: an interactive turn's end under way is finished first, not left behind."""
        await self.ended_single_shot()
        await super().release(reason)

    def phrase(self, text: str, start: float, end: float, sureness: float) -> dict[str, Any]:
        self.phrases += 1
        return phrase_body(text, start, end, sureness, self.detailed)

    async def closing(self) -> None:
        """The end of the audio: on the interactive path with no phrase, `NoMatch`; then `turn.end`."""
        if self.failed:
            return
        if self.single_shot and self.phrases == 0:
            await self.send_usp("speech.phrase", self.phrase("", 0.0, self.seconds, 0.0))
        await self.send_usp("turn.end", {})

    async def close_by_server(self, reason: str) -> None:
        """Idle timeout or shutdown, once the finals are sent. The idle timeout ends the turn as
        Azure ends one (`closing`: on the interactive path its `NoMatch`, as Azure's initial silence
        timeout; then `turn.end`) and keeps the connection: the SDK in continuous recognition goes on
        with a new turn on it, where a refusal would cancel its recognition for good (Pipecat's
        service never starts another). Shutdown: the Close 1011 with its sentence."""
        if reason == "idle_timeout":
            with contextlib.suppress(ConnectionError):
                await self.closing()
            self.failed = self.turn_over = True
            self.turn_done.set()
            return
        self.finished = True
        await self.error(reason, self.server_close_sentence(reason), counted=True)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """USP has no error message: the Close, 1011 for the server's side, else 1007, its reason
        the code and the sentence (cut to the Close's 123 bytes)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        self.finished = self.failed = True
        close = WSCloseCode.INTERNAL_ERROR if code in SERVER_SIDE else WSCloseCode.INVALID_TEXT
        await self.close(close, coded_close_reason(code, message))


def phrase_body(text: str, start: float, end: float, sureness: float, detailed: bool) -> dict[str, Any]:
    """A phrase (`speech.phrase`, or the REST API's answer): `DisplayText`, with `detailed` also an
    `NBest` of one; `NoMatch` for no words."""
    span = {"Offset": ticks(start), "Duration": ticks(max(0.0, end - start))}
    if not text:
        return {"RecognitionStatus": "NoMatch", **span}
    if not detailed:
        return {"RecognitionStatus": "Success", "DisplayText": text, **span}
    lexical = " ".join(word.strip(".,?!;:").lower() for word in text.split())
    best = {"Confidence": sureness, "Lexical": lexical, "ITN": lexical, "MaskedITN": lexical, "Display": text}
    return {"RecognitionStatus": "Success", **span, "DisplayText": text, "NBest": [best]}


def coded_close_reason(code: str, message: str) -> str:
    """The error's code and sentence as the Close's reason (the USP has no error message)."""
    return close_reason(f"{code}: {echoable(message)}")


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query refused after the upgrade, so that the SDK shows the sentence: the Close, 1007."""
    reason = coded_close_reason("invalid_query_parameter", f"{exc.parameter}: {exc}")
    return await refuse_in_band(core, request, ws, None, WSCloseCode.INVALID_TEXT, ends_stream, reason)


USP = Api(
    INTERACTIVE_PATH,
    "Azure AI Speech's real-time API",
    parse_query,
    AzureConnection,
    ends_stream,
    refuse_parameters,
    subprotocol="USP",
)
