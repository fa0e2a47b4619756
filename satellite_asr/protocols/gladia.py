"""Gladia's live speech-to-text API v2 (docs/gladia.md): `POST /v2/live` <-> a pending session,
its WebSocket <-> `Session` calls.

A client first posts the stream's settings with its key; the answer names the session and the
WebSocket URL to stream to, whose `token` stands for the key (clients do not send it again). That
URL takes one connection at a time until the session ends (`stop_recording`, or the server ends
it): a client whose connection dropped reconnects to it, as Gladia's SDK and Pipecat do, and the
session goes on (its id, byte count, times and transcript). Not connected, it lasts
`first_message_timeout_s`, and each address may hold at most `max_connections_per_address` such
sessions: a POST costs the daemon nothing until its WebSocket comes. Audio comes as binary
messages or base64 `audio_chunk` messages; `stop_recording` ends it. Every message the daemon
sends is `{"type", "session_id", "created_at", "data"}`; which ones a client hears is its
`messages_config`'s choice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMessage, web
from multidict import MultiMapping

from satellite_asr.audio import MAX_CHANNELS, PcmDecoder
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.events import (
    FinalTranscript,
    SpeechStarted,
    SpeechStopped,
)
from satellite_asr.protocols import ProtocolError, ReadAhead, echoable, gladia_error, utc_now
from satellite_asr.protocols.iso639 import engine_language
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    StreamingApiHandler,
    StreamParams,
    check_names,
    confidence,
    is_control,
    number_within,
    refuse_in_band,
    replacing_terms,
)
from satellite_asr.protocols.uploads import RequestError, UploadPace, client_fault, read_limited
from satellite_asr.session import SessionOptions

PATH = "/v2/live"
PROTOCOL = "gladia"
ENCODINGS = {"wav/pcm": "s16le", "wav/alaw": "pcma", "wav/ulaw": "pcmu"}
"""Gladia's raw encodings and the daemon's names of them."""
BIT_DEPTHS = {"wav/pcm": {16}, "wav/alaw": {8, 16}, "wav/ulaw": {8, 16}}
"""The bit depths taken with each encoding: 16-bit PCM only (the decoder has no 8, 24 or 32-bit
integers); G.711 is 8-bit whatever a client says, and Pipecat sends its default 16 with it."""
SAMPLE_RATES = (8000, 16000, 32000, 44100, 48000)
MAX_BODY_BYTES = 64 * 1024
KEPT_UTTERANCES = 2000
"""The closing transcript's bound: a session's last 2000 final utterances (hours of commands; about
0.5 KB each), so that a stream that goes on for days holds bounded memory."""
REGIONS = ("us-west", "eu-west")
MESSAGE_DEFAULTS = {
    "receive_partial_transcripts": False,
    "receive_final_transcripts": True,
    "receive_speech_events": True,
    "receive_pre_processing_events": True,
    "receive_realtime_processing_events": True,
    "receive_post_processing_events": True,
    "receive_acknowledgments": True,
    "receive_errors": True,
    "receive_lifecycle_events": False,
}
"""Gladia's `messages_config`, each flag's default."""
REFUSED = {
    ("realtime_processing", "translation"): "translation",
    ("realtime_processing", "named_entity_recognition"): "named entity recognition",
    ("realtime_processing", "sentiment_analysis"): "sentiment analysis",
    ("realtime_processing", "custom_spelling"): "custom spelling",
    ("post_processing", "summarization"): "summarization",
    ("post_processing", "chapterization"): "chapterization",
    ("pre_processing", "audio_enhancer"): "audio enhancement",
    ("", "callback"): "callbacks",
}
"""Features the daemon does not have: refused when set true (false, as clients send by default, is fine)."""
SECTIONS = {
    "language_config": {"languages", "code_switching"},
    "pre_processing": {"audio_enhancer", "speech_threshold"},
    "realtime_processing": {
        "words_accurate_timestamps",
        "custom_vocabulary",
        "custom_vocabulary_config",
        "custom_spelling",
        "custom_spelling_config",
        "translation",
        "translation_config",
        "named_entity_recognition",
        "sentiment_analysis",
    },
    "post_processing": {"summarization", "summarization_config", "chapterization"},
    "messages_config": set(MESSAGE_DEFAULTS),
    "callback_config": {"url", *MESSAGE_DEFAULTS},
}
FIELDS = {
    "encoding",
    "bit_depth",
    "sample_rate",
    "channels",
    "model",
    "endpointing",
    "maximum_duration_without_endpointing",
    "custom_metadata",
    "callback",
    *SECTIONS,
}
STATUS = {
    "invalid_session": 401,
    "timeout": 408,
    "idle_timeout": 408,
    "engine_error": 500,
    "server_busy": 503,
    "shutdown": 503,
}
"""The HTTP-like status of each of the daemon's error codes in Gladia's error message; any other is 400."""
CLOSE_BY_STATUS = {400: 4400, 401: 4401, 408: 4408, 500: 4500, 503: 4503}
"""The Close after a fatal error: Gladia's SDK reconnects on 1002-4399 and 4500 on, never to a
refusal it would meet again (4400-4499); after a fatal error the session URL is unknown anyway."""


@dataclass(frozen=True)
class GladiaConfig:
    """A session's settings, from its POST."""

    encoding: str
    sample_rate: int
    channels: int
    language: str | None
    terms: tuple[str, ...]
    messages: dict[str, bool]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate, self.channels)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings,
            partials=self.messages["receive_partial_transcripts"],
            language=self.language,
            terms=self.terms,
        )

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * (2 if self.encoding == "wav/pcm" else 1)


def invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_parameters", message)


def section(body: dict[str, Any], name: str) -> dict[str, Any]:
    """One of the body's objects (absent or null: empty), its fields checked by name."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    unknown = sorted(set(value) - SECTIONS[name])
    if unknown:
        raise invalid(f"{name}.{echoable(unknown[0])} is not a field this API knows")
    return value


def flag(values: dict[str, Any], name: str, where: str) -> bool:
    value = values.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"{where}{name} must be a boolean")
    return bool(value)


def parse_body(raw: bytes, core: Core) -> GladiaConfig:
    """A POST body's settings, or `ProtocolError` `invalid_parameters` naming the first fault."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError):
        raise invalid("the body must be a JSON object; this one is not JSON") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise invalid(f"{echoable(unknown[0])} is not a field this API knows")
    body = {name: value for name, value in body.items() if value is not None}  # null: the default
    sections = {name: section(body, name) for name in SECTIONS}
    for (where, name), feature in REFUSED.items():
        values = sections[where] if where else body
        if flag(values, name, f"{where}." if where else ""):
            where_name = f"{where}.{name}" if where else name
            raise invalid(f"this server does not do {feature}; leave {where_name} out or false")
    encoding = body.get("encoding", "wav/pcm")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise invalid(f"encoding must be one of the following values: {', '.join(ENCODINGS)}")
    depth = body.get("bit_depth", 16)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth not in BIT_DEPTHS[encoding]:
        depths = " or ".join(str(d) for d in sorted(BIT_DEPTHS[encoding]))
        raise invalid(f"bit_depth must be {depths} with {encoding} on this server")
    rate = body.get("sample_rate", 16000)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate not in SAMPLE_RATES:
        raise invalid(f"sample_rate must be one of the following values: {', '.join(map(str, SAMPLE_RATES))}")
    channels = body.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= MAX_CHANNELS:
        raise invalid(f"channels must be a whole number from 1 to {MAX_CHANNELS}")
    model = body.get("model", "solaria-1")
    if not isinstance(model, str) or not model:
        raise invalid("model must be a model name")
    for name, low, high in (("endpointing", 0.01, 10), ("maximum_duration_without_endpointing", 5, 60)):
        if body.get(name) is not None and not number_within(body[name], low, high, False):
            raise invalid(f"{name} must be a number from {low:g} to {high:g} (seconds)")
    if body.get("custom_metadata") is not None and not isinstance(body["custom_metadata"], dict):
        raise invalid("custom_metadata must be an object")
    threshold = sections["pre_processing"].get("speech_threshold")
    if threshold is not None and not number_within(threshold, 0, 1, False):
        raise invalid("pre_processing.speech_threshold must be a number from 0 to 1")
    flag(sections["realtime_processing"], "words_accurate_timestamps", "realtime_processing.")
    flag(sections["language_config"], "code_switching", "language_config.")
    messages = {
        name: flag(sections["messages_config"], name, "messages_config.")
        if sections["messages_config"].get(name) is not None
        else default
        for name, default in MESSAGE_DEFAULTS.items()
    }
    languages = sections["language_config"].get("languages") or []
    if not isinstance(languages, list):
        raise invalid("language_config.languages must be a list of language codes")
    try:
        named = {engine_language(core, code, "language_config.languages") for code in languages} - {None}
        terms = vocabulary(core, sections["realtime_processing"])
    except ProtocolError as exc:
        raise invalid(exc.message) from None
    language = next(iter(named)) if len(named) == 1 else None
    return GladiaConfig(
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
        language=language if named else core.settings.default_language,
        terms=terms,
        messages=messages,
    )


def vocabulary(core: Core, realtime: dict[str, Any]) -> tuple[str, ...]:
    """The custom vocabulary's words, the engine's biasing terms (as other APIs' keyterms): each
    entry a text or `{value, intensity, pronunciations, language}`, of which only `value` is used."""
    config = realtime.get("custom_vocabulary_config")
    if not flag(realtime, "custom_vocabulary", "realtime_processing."):
        if config is not None:
            raise invalid("realtime_processing.custom_vocabulary_config needs custom_vocabulary true")
        return ()
    if not isinstance(config, dict) or not isinstance(config.get("vocabulary"), list):
        raise invalid("realtime_processing.custom_vocabulary_config.vocabulary must be a list")
    unknown = sorted(set(config) - {"vocabulary", "default_intensity"})
    if unknown:
        raise invalid(f"custom_vocabulary_config.{echoable(unknown[0])} is not a field this API knows")
    words = []
    for entry in config["vocabulary"]:
        if isinstance(entry, dict):
            entry = entry.get("value")
        if not isinstance(entry, str):
            raise invalid("each custom_vocabulary_config.vocabulary entry must be a text or an object with a value")
        words.append(entry)
    return replacing_terms(core, words, "realtime_processing.custom_vocabulary_config.vocabulary")


@dataclass
class Pending:
    """A session posted and not ended: its id (every message's `session_id`), settings, its URL's
    token, who posted it, and what outlives a connection (the stream's settings, `StreamParams`)."""

    session_id: str
    config: GladiaConfig
    token: str = field(repr=False)
    address: str
    created_at: str
    owner: LiveSessions = field(repr=False)
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)
    connected: bool = False
    received: int = 0
    """Audio bytes taken over every connection: the acknowledgments' byte ranges, the times' origin."""
    utterances: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=KEPT_UTTERANCES), repr=False
    )
    """The last `KEPT_UTTERANCES` final utterances, for the session's closing transcript."""

    def decoder(self) -> PcmDecoder:
        return self.config.decoder()

    def session_options(self, core: Core) -> SessionOptions:
        return self.config.session_options(core)


class LiveSessions:
    """The sessions posted and not ended. One not connected (never yet, or its connection dropped)
    lasts `first_message_timeout_s`; an address holds at most `max_connections_per_address` of them,
    the daemon `max_websocket_connections`. The WebSocket that presents its token takes it, one at a
    time, until the session ends (`disconnected`)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.pending: dict[str, Pending] = {}
        """By token."""

    def held_by(self, address: str) -> int:
        return sum(1 for pending in self.waiting() if pending.address == address)

    def waiting(self) -> list[Pending]:
        """The sessions not connected: those a POST (or a dropped connection) holds."""
        return [pending for pending in self.pending.values() if not pending.connected]

    def expire_later(self, entry: Pending) -> None:
        loop = asyncio.get_running_loop()
        entry.expiry = loop.call_later(self.core.settings.first_message_timeout_s, self.pending.pop, entry.token, None)

    def create(self, config: GladiaConfig, address: str) -> Pending:
        """A new session's pending entry, or `ProtocolError` `too_many_sessions`."""
        settings = self.core.settings
        if self.held_by(address) >= settings.max_connections_per_address:
            raise ProtocolError(
                "too_many_sessions",
                f"this address holds {settings.max_connections_per_address} sessions not yet connected "
                "(max_connections_per_address); connect to one, or wait for them to expire",
            )
        if len(self.waiting()) >= settings.max_websocket_connections:
            raise ProtocolError("too_many_sessions", "too many sessions not yet connected; try again later")
        token = secrets.token_urlsafe(24)
        entry = Pending(str(uuid.uuid4()), config, token, address, utc_now(), self)
        self.expire_later(entry)
        self.pending[token] = entry
        return entry

    def claim(self, query: MultiMapping[str], core: Core) -> Pending:
        """The session whose token the WebSocket URL carries, not connected: its connection takes it
        (`connect`), not this check, which an upgrade whose client is gone before its answer passes."""
        check_names(query, {"token"}, set())
        token = query.get("token")
        entry = self.pending.get(token) if token else None
        if entry is None:
            raise ParameterError(
                "token",
                "this session URL is unknown, ended or expired (a session must be connected within "
                f"{core.settings.first_message_timeout_s:g} s of its POST or of its connection's drop); "
                "POST /v2/live for a new one",
            )
        if entry.connected:
            raise ParameterError("token", CONNECTED_ALREADY)
        return entry

    @staticmethod
    def connect(entry: Pending) -> bool:
        """A connection takes the session until it ends (`disconnected`); False if another has it
        (both upgrades passed `claim` before either connected)."""
        if entry.connected:
            return False
        if entry.expiry is not None:
            entry.expiry.cancel()
        entry.connected = True
        return True

    def disconnected(self, entry: Pending, ended: bool) -> None:
        """The session's connection is over: an ended session is forgotten; one whose client left
        without ending it waits `first_message_timeout_s` for the client to reconnect."""
        entry.connected = False
        if ended:
            self.pending.pop(entry.token, None)
        else:
            self.expire_later(entry)


CONNECTED_ALREADY = "this session is connected already; it takes one connection at a time"


def ws_url(request: web.Request, token: str) -> str:
    """The session's WebSocket URL, on the host and scheme the POST came by."""
    scheme = "wss" if request.scheme == "https" else "ws"
    return f"{scheme}://{request.host}{PATH}?token={token}"


async def read_body(request: web.Request, settings: Settings) -> bytes:
    """The whole body, which may come in many reads, at most `MAX_BODY_BYTES`, at an upload's pace
    (a body that stalls is 408 `body_timeout`, as an upload's is)."""
    too_large = RequestError("body_too_large", f"the body is over {MAX_BODY_BYTES // 1024} KiB", status=413)
    try:
        read = functools.partial(request.content.read, MAX_BODY_BYTES + 1)
        return await read_limited(read, MAX_BODY_BYTES, UploadPace.from_settings(settings), lambda: too_large)
    except web.RequestPayloadError as exc:  # a body its Content-Encoding cannot decode
        raise invalid(f"the body cannot be read: {client_fault(exc)}") from None


class GladiaConnection(InOrderConnection):
    """A client of Gladia's live API: its audio (binary or base64), `stop_recording`, and each
    utterance's transcripts and speech events as its `messages_config` asks."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, Pending)  # the POST's session: claimed before the connection
        self.live = params
        self.owns = LiveSessions.connect(params)
        """The session is this connection's: another's, it is refused (`opened`) and left alone."""
        self.config = params.config
        self.session_id = params.session_id
        self.offset = params.received / self.config.bytes_per_second
        """Where this connection's audio starts in the session's: the engine's times are this connection's."""
        self.stops: dict[int, float] = {}
        """Where each utterance whose `speech_end` waits for its `speech_start` ended."""
        self.utterances = params.utterances

    @property
    def seconds(self) -> float:
        """The session's audio so far, over every connection."""
        return self.offset + super().seconds

    async def release(self, reason: str) -> None:
        """The connection is over: the session ends with it, unless the connection was lost (no
        Close came or went: a network drop, which Gladia's SDK reconnects after). A client that
        closed, or a Close from the daemon (a message over the size limit), ends it: the slot it
        would hold meanwhile is the address's."""
        await super().release(reason)
        if self.owns:
            refused = isinstance(self.ws.exception(), WebSocketError)  # a frame aiohttp refused: its Close went
            lost = not self.finished and not refused and self.ws.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE)
            self.live.owner.disconnected(self.live, ended=not lost)

    def wants(self, flag_name: str) -> bool:
        return self.config.messages[flag_name]

    async def message(self, kind: str, data: dict[str, Any] | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {"session_id": self.session_id, "created_at": utc_now(), "type": kind, **extra}
        if data is not None:
            body["data"] = data
        await self.send(body)

    async def opened(self) -> None:
        """Nothing is sent: `start_session` is the client's own, from the POST's answer (Gladia's
        SDK makes it; one from here was a second). A connection that lost the race for its session
        to another is refused as `claim` refuses (`ProtocolError` is fatal here)."""
        if not self.owns:
            raise ProtocolError("invalid_session", f"token: {CONNECTED_ALREADY}")

    def utterance(self, text: str, start: float, end: float, sureness: float, language: str | None) -> dict[str, Any]:
        """Gladia's utterance, from the engine's times; each word spans it (the engine gives no word timings)."""
        start, end = self.offset + start, self.offset + max(start, end)
        words = [{"word": word, "start": start, "end": end, "confidence": sureness} for word in text.split()]
        return {
            "text": text,
            "start": start,
            "end": end,
            "language": language or self.config.language or "en",
            "words": words,
            "channel": 0,
            "confidence": sureness,
        }

    async def speech_started(self, event: SpeechStarted) -> None:
        await super().speech_started(event)
        await self.speech_events()

    async def speech_stopped(self, event: SpeechStopped) -> None:
        self.stops[event.utterance_id] = event.end
        await self.speech_events()

    def partials_wanted(self) -> bool:
        return self.wants("receive_partial_transcripts")

    async def speech_events(self) -> None:
        """`speech_start` of the first utterance whose final is not sent, once, and the `speech_end`
        of each utterance whose start was sent: a later utterance's wait for the final before it,
        as its partials do, so that a client never takes them for the speech of the last command."""
        start = self.pending.announce()
        if start is not None and self.wants("receive_speech_events"):
            await self.message("speech_start", {"time": self.offset + start, "channel": 0})
        for utterance_id in sorted(self.stops):
            if utterance_id > self.pending.announced:
                break
            end = self.stops.pop(utterance_id)
            if self.wants("receive_speech_events"):
                await self.message("speech_end", {"time": self.offset + end, "channel": 0})

    async def partial(self, utterance_id: int, text: str) -> None:
        now = super().seconds
        utterance = self.utterance(text, self.pending.starts.get(utterance_id, now), now, 0.0, self.config.language)
        await self.message(
            "transcript", {"id": utterance_id_text(utterance_id), "is_final": False, "utterance": utterance}
        )

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final (one with words), then what the next utterance held back for it: its
        speech events and partial."""
        self.pending.final(event.utterance_id)
        if event.text.strip():
            utterance = self.utterance(event.text, event.start, event.end, confidence(event), event.language)
            if self.wants("receive_post_processing_events"):
                self.utterances.append(utterance)
            if self.wants("receive_final_transcripts"):
                data = {"id": utterance_id_text(event.utterance_id), "is_final": True, "utterance": utterance}
                await self.message("transcript", data)
        await self.speech_events()
        await self.release_held()

    async def on_binary(self, data: bytes) -> None:
        """Audio, acknowledged with its byte and time range when the client asked for acknowledgments."""
        if self.live.received == 0 and data and self.wants("receive_lifecycle_events"):
            await self.message("start_recording")
        try:
            await super().on_binary(data)
        except ProtocolError as exc:
            raise ProtocolError("invalid_audio_chunk", exc.message.removeprefix("frame dropped: ")) from None
        first = self.live.received
        last = self.live.received = first + len(data)
        if self.wants("receive_acknowledgments"):
            rate = self.config.bytes_per_second
            data_range = {"byte_range": [first, last], "time_range": [first / rate, last / rate]}
            await self.message("audio_chunk", data_range, acknowledged=True, error=None)

    def controls(self) -> dict[str, Control]:
        return {"audio_chunk": self.audio_chunk, "stop_recording": self.stop_recording}

    async def audio_chunk(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        chunk = data.get("chunk") if isinstance(data, dict) else None
        if not isinstance(chunk, str):
            raise ProtocolError("invalid_audio_chunk", "an audio_chunk's data.chunk must be base64 audio")
        try:
            audio = base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_audio_chunk", "an audio_chunk's data.chunk is not valid base64") from None
        await self.on_binary(audio)

    async def stop_recording(self, message: dict[str, Any]) -> None:
        """The audio ends: acknowledged at once, then what is still to come, the closing messages, the Close."""
        if self.wants("receive_acknowledgments"):
            data = {"recording_duration": self.seconds, "recording_left_to_process": 0.0}
            await self.message("stop_recording", data, acknowledged=True, error=None)
        await self.end()

    async def closing(self) -> None:
        """`end_recording`, the session's transcript (`post_transcript`, `post_final_transcript`),
        `end_session`, each as `messages_config` asks."""
        if self.wants("receive_lifecycle_events"):
            await self.message("end_recording", {"recording_duration": self.seconds})
        if self.wants("receive_post_processing_events"):
            languages = sorted({utterance["language"] for utterance in self.utterances})
            transcription = {
                "full_transcript": " ".join(u["text"] for u in self.utterances),
                "languages": languages,
                "utterances": list(self.utterances),
            }
            await self.message("post_transcript", transcription)
            metadata = {
                "audio_duration": self.seconds,
                "number_of_distinct_channels": 1,
                "billing_time": self.seconds,
                "transcription_time": self.seconds,
            }
            await self.message("post_final_transcript", {"metadata": metadata, "transcription": transcription})
        if self.wants("receive_lifecycle_events"):
            await self.message("end_session")

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """A bad audio chunk is Gladia's unacknowledged `audio_chunk`; any other error its `error`
        message. The stream goes on (nothing else is lost) unless `fatal`: then the Close."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        status = STATUS.get(code, 400)
        if code == "invalid_audio_chunk":
            await self.message("audio_chunk", None, acknowledged=False, error={"message": echoable(message)})
        elif self.wants("receive_errors") or fatal:
            await self.message("error", {"code": code, "status_code": status, "message": echoable(message)})
        if fatal:
            self.finished = True
            await self.close(CLOSE_BY_STATUS.get(status, 4500), code)


def utterance_id_text(utterance_id: int) -> str:
    """An utterance's id as Gladia writes them, a text: its clients compare, never count them."""
    return f"00-{utterance_id:08d}"


def is_end_of_audio(message: WSMessage) -> bool:
    """`stop_recording` ends the audio: what came before the client's Close is still wanted."""
    return is_control(message, "stop_recording")


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """An unknown, used or expired session URL is refused after the upgrade: Gladia's `error`
    message, which every client reports, then a Close in 4400-4499, which the SDK does not retry."""
    status = 401 if exc.parameter == "token" else 400
    error = {
        "type": "error",
        "created_at": utc_now(),
        "data": {"code": "invalid_session", "status_code": status, "message": f"{exc.parameter}: {exc}"},
    }
    return await refuse_in_band(core, request, ws, error, CLOSE_BY_STATUS[status], is_end_of_audio)


class GladiaHandler:
    """`POST /v2/live` (a session's settings, answered with its URL) and its WebSocket (`GET /v2/live?token=`)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.sessions = LiveSessions(core)
        api = Api(PATH, "Gladia's live API", self.sessions.claim, GladiaConnection, is_end_of_audio, refuse_parameters)
        self.streams = StreamingApiHandler(core, api)

    async def create(self, request: web.Request) -> web.Response:
        extra = sorted(set(request.query) - {"region", "api_key"})
        try:
            if extra:
                raise invalid(f"{echoable(extra[0])} is not a query parameter this API knows")
            region = request.query.get("region")
            if region is not None and region not in REGIONS:
                raise invalid(f"region must be one of the following values: {', '.join(REGIONS)}")
            config = parse_body(await read_body(request, self.core.settings), self.core)
            entry = self.sessions.create(config, request.remote or "")
        except ProtocolError as exc:
            self.core.metrics.errors.labels(exc.code).inc()
            status = exc.status if isinstance(exc, RequestError) else 429 if exc.code == "too_many_sessions" else 400
            return gladia_response(request.path, status, exc.message)
        body = {"id": entry.session_id, "created_at": entry.created_at, "url": ws_url(request, entry.token)}
        return web.json_response(body, status=201)


def gladia_response(path: str, status: int, message: str) -> web.Response:
    return web.json_response(gladia_error(path, status, message), status=status)
