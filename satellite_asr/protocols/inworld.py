"""Inworld's streaming speech-to-text API at `/stt/v1/transcribe:streamBidirectional` (docs/inworld.md):
wire messages <-> `Session` calls, so that LiveKit's Inworld plugin (`inworld.STT`) reaches the daemon
by its `base_url` alone.

Every message is a JSON object of one field that names it. The stream's settings come in its first
message, `transcribeConfig`; nothing answers it. Audio comes as `audioChunk` messages, base64 16-bit
PCM in `content`. Each utterance the daemon's endpointing cuts is a turn: `speechStarted`, its words
so far as `transcription` results with `isFinal` false, `speechStopped`, then the final (`isFinal`
true, empty for a turn with no words: a turn begun is always ended), each in a `result`. `endTurn`
ends the turn in progress now; `closeStream` ends the stream: the finals still to come, then the
Close 1000. An error is `{"error": {"code", "status", "message", "details"}}` (a gRPC status, the
daemon's code as the `ErrorInfo` reason); a refused `transcribeConfig` is followed by the Close 1008,
any later error leaves the stream going. Protobuf's JSON names (`audio_chunk`) are taken too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType
from multidict import MultiMapping

from satellite_asr.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SpeechStarted, SpeechStopped
from satellite_asr.protocols import ProtocolError, checked_language, echoable, grpc_status, json_object
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    SettingsMessageConnection,
    StreamParams,
    base64_audio,
    check_names,
    number_within,
    refusing_in_band,
    replacing_terms,
)
from satellite_asr.session import SessionOptions

PATH = "/stt/v1/transcribe:streamBidirectional"
PROTOCOL = "inworld"
ENCODINGS = {"LINEAR16"}
"""The streaming API's one encoding: 16-bit PCM (Inworld takes no other on its stream)."""
FIELDS = {
    "modelId",
    "audioEncoding",
    "sampleRateHertz",
    "numberOfChannels",
    "language",
    "voiceProfileConfig",
    "endOfTurnConfidenceThreshold",
    "inworldSttV1Config",
    "includeWordTimestamps",
    "prompts",
}
SECTIONS = {
    "voiceProfileConfig": {"enableVoiceProfile", "topN"},
    "inworldSttV1Config": {"minEndOfTurnSilenceWhenConfident", "vadThreshold"},
}
CHECKED_NOT_APPLIED = {
    "modelId",
    "voiceProfileConfig.enableVoiceProfile",
    "voiceProfileConfig.topN",
    "endOfTurnConfidenceThreshold",
    "inworldSttV1Config.minEndOfTurnSilenceWhenConfident",
    "inworldSttV1Config.vadThreshold",
}
"""Taken and checked, but the daemon's own engine and endpointing decide (docs/inworld.md); a voice
profile is never sent (the plugin asks for one by default, and reads none when it is missing)."""
MESSAGES = ("transcribeConfig", "audioChunk", "endTurn", "closeStream")
MAX_AUDIO_BYTES = 262144
"""Most decoded audio in one `audioChunk`: 8 s of 16 kHz mono (the plugin sends 10-50 ms at a time)."""
GRPC_STATUS = {
    "invalid_argument": (3, "INVALID_ARGUMENT"),
    "timeout": (4, "DEADLINE_EXCEEDED"),
    "idle_timeout": (4, "DEADLINE_EXCEEDED"),
    "server_busy": (8, "RESOURCE_EXHAUSTED"),
    "too_many_connections": (8, "RESOURCE_EXHAUSTED"),
    "rate_limited": (8, "RESOURCE_EXHAUSTED"),
    "engine_error": (13, "INTERNAL"),
    "shutdown": (14, "UNAVAILABLE"),
    "unauthorized": (16, "UNAUTHENTICATED"),
    "invalid_api_key": (16, "UNAUTHENTICATED"),
    "forbidden": (7, "PERMISSION_DENIED"),
}
"""The gRPC status an error of the daemon's code carries; any other is `INVALID_ARGUMENT`."""
_SNAKE = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """A protobuf field's JSON name: `audio_chunk` as `audioChunk` (a name already so is unchanged)."""
    return _SNAKE.sub(lambda match: match.group(1).upper(), name)


def camel_fields(value: dict[str, Any]) -> dict[str, Any]:
    """An object's fields by their JSON names; the same field given both ways is refused."""
    fields: dict[str, Any] = {}
    for name, field in value.items():
        if camel(name) in fields:
            raise ProtocolError("invalid_argument", f"{echoable(camel(name))!r} is given twice")
        fields[camel(name)] = field
    return fields


@dataclass(frozen=True)
class InworldConfig:
    """The stream's settings from its `transcribeConfig`."""

    sample_rate: int
    channels: int
    language: str | None
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", self.sample_rate, self.channels)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in `transcribeConfig`; the URL carries none (the daemon's `api_key` aside)."""
    check_names(query, set(), set())
    return None


def invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_argument", message)


def message_of(data: str) -> tuple[str, dict[str, Any]]:
    """A text message's name (its one field, by its JSON name) and body, or `invalid_argument`."""
    message = json_object(data)
    if isinstance(message, str):
        raise invalid(f"messages must be JSON objects; this one {message}")
    if len(message) != 1:
        raise invalid(f"a message is an object of one field, one of {', '.join(MESSAGES)}; this one has {len(message)}")
    name, body = next(iter(message.items()))
    name = camel(name)
    if name not in MESSAGES:
        raise invalid(f"unknown message {echoable(name)!r}; expected one of {', '.join(MESSAGES)}")
    if not isinstance(body, dict):
        raise invalid(f"{name} must be an object")
    return name, camel_fields(body)


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """One of the config's nested objects (empty when left out), its fields known."""
    value = config.get(name, {})
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    value = camel_fields(value)
    unknown = sorted(set(value) - SECTIONS[name])
    if unknown:
        raise invalid(f"{name} has no field {echoable(unknown[0])!r}")
    return value


def number(fields: dict[str, Any], name: str, low: float, high: float, *, whole: bool) -> None:
    if name in fields and not number_within(fields[name], low, high, whole):
        raise invalid(f"{name} must be {'a whole number' if whole else 'a number'} from {low:g} to {high:g}")


def parse_config(message: WSMessage, core: Core) -> InworldConfig:
    """The stream's settings from its first message, or `ProtocolError` `invalid_argument` (or
    `unsupported_language`) saying what is wrong."""
    if message.type != WSMsgType.TEXT:
        raise invalid("the first message must be transcribeConfig; this one is binary")
    name, config = message_of(message.data)
    if name != "transcribeConfig":
        raise invalid(f"the first message must be transcribeConfig, not {name}")
    unknown = sorted(set(config) - FIELDS)
    if unknown:
        raise invalid(f"transcribeConfig has no field {echoable(unknown[0])!r}")
    encoding = config.get("audioEncoding", "LINEAR16")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise invalid(f"audioEncoding {echoable(str(encoding))!r}: the stream takes LINEAR16 (16-bit PCM) only")
    rate = config.get("sampleRateHertz", 16000)
    if not number_within(rate, MIN_RATE, MAX_RATE, True):
        raise invalid(f"sampleRateHertz must be a whole number from {MIN_RATE} to {MAX_RATE}")
    channels = config.get("numberOfChannels", 1)
    if not number_within(channels, 1, MAX_CHANNELS, True):
        raise invalid(f"numberOfChannels must be a whole number from 1 to {MAX_CHANNELS}")
    model = config.get("modelId", "inworld/inworld-stt-1")
    if not isinstance(model, str) or not model.strip():
        raise invalid("modelId must be a model's name, e.g. inworld/inworld-stt-1")
    timestamps = config.get("includeWordTimestamps")
    if timestamps is True:
        raise invalid("includeWordTimestamps: this server gives no word timings; leave it out or set it to false")
    if timestamps is not None and timestamps is not False:  # 0 is no boolean, though it equals False
        raise invalid("includeWordTimestamps must be true or false")
    number(config, "endOfTurnConfidenceThreshold", 0, 1, whole=False)
    profile = section(config, "voiceProfileConfig")
    if not isinstance(profile.get("enableVoiceProfile", False), bool):
        raise invalid("voiceProfileConfig.enableVoiceProfile must be true or false")
    number(profile, "topN", 0, 100, whole=True)
    turns = section(config, "inworldSttV1Config")
    number(turns, "minEndOfTurnSilenceWhenConfident", 0, 60000, whole=True)
    number(turns, "vadThreshold", 0, 1, whole=False)
    try:
        language = checked_language(core, config.get("language"), "language") or core.settings.default_language
        prompts = config.get("prompts")
        terms = () if prompts is None else replacing_terms(core, prompts, "prompts")
    except ProtocolError as exc:
        code = exc.code if exc.code in ("unsupported_language", "context_too_long") else "invalid_argument"
        raise ProtocolError(code, exc.message) from None
    return InworldConfig(sample_rate=int(rate), channels=int(channels), language=language, terms=terms)


def error_event(code: str, message: str) -> dict[str, Any]:
    """Inworld's error (a gRPC status as its gateway writes one): the status's number and name, the
    sentence, and the daemon's code as the reason of an `ErrorInfo`; `message` may quote the client."""
    number, status = GRPC_STATUS.get(code, (3, "INVALID_ARGUMENT"))
    return {"error": {**grpc_status(number, code, message), "status": status}}


def ends_stream(message: WSMessage) -> bool:
    """`closeStream`: what the client sent before its Close is still wanted."""
    if message.type != WSMsgType.TEXT:
        return False
    parsed = json_object(message.data)
    return isinstance(parsed, dict) and len(parsed) == 1 and camel(next(iter(parsed))) == "closeStream"


def result(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"result": {kind: body}}


class InworldConnection(SettingsMessageConnection):
    """A client of the streaming API: its `transcribeConfig`, audio, `endTurn` and `closeStream`;
    each turn's `speechStarted`, partial `transcription`s, `speechStopped` and final. A turn's
    `speechStarted` and `speechStopped` heard while the final of the one before it decodes wait for
    that final, as its partials do: the plugin takes a `speechStarted` before the last turn's final
    for that turn's, and would start no new one."""

    protocol = PROTOCOL
    invalid_message = "invalid_argument"
    idle_means_missing_audio = True  # LiveKit's plugin takes the idle Close for its stream's end (docs/inworld.md)

    def parse_settings(self, message: WSMessage) -> InworldConfig:
        return parse_config(message, self.core)

    async def opened(self) -> None:
        """Nothing answers the config."""
        self.deferred_starts: dict[int, float] = {}
        self.deferred_stops: dict[int, float] = {}

    def waits(self, utterance_id: int) -> bool:
        return any(earlier < utterance_id for earlier in self.pending.starts)

    async def speech_started(self, event: SpeechStarted) -> None:
        await super().speech_started(event)
        if self.waits(event.utterance_id):
            self.deferred_starts[event.utterance_id] = event.start
            return
        await self.send(self.speech_started_result(event.start))

    def speech_started_result(self, start: float) -> dict[str, Any]:
        return result("speechStarted", {"startTimeMs": round(start * 1000)})

    async def speech_stopped(self, event: SpeechStopped) -> None:
        if self.waits(event.utterance_id):
            self.deferred_stops[event.utterance_id] = event.end
            return
        await self.send(self.speech_stopped_result(event.end))

    def speech_stopped_result(self, end: float) -> dict[str, Any]:
        """`speechStopped`, with the silence heard since the speech's end so far."""
        return result("speechStopped", {"silenceDurationMs": max(0, round((self.seconds - end) * 1000))})

    def transcription(self, text: str, *, final: bool) -> dict[str, Any]:
        return result("transcription", {"transcript": text, "isFinal": final, "wordTimestamps": []})

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.send(self.transcription(text.strip(), final=False))

    async def final(self, event: FinalTranscript) -> None:
        """The turn's final, empty for a turn with no words; then what it held back of the turns after
        it, each turn's in its order."""
        self.pending.final(event.utterance_id)
        await self.send(self.transcription(event.text.strip(), final=True))
        await self.release_held()

    async def release_held(self) -> None:
        """The turns after a final that no earlier one holds back any more: each one's `speechStarted`,
        latest partial and `speechStopped`, turn by turn."""
        held = dict(self.pending.released())
        free = {turn for turn in {*self.deferred_starts, *self.deferred_stops} if not self.waits(turn)}
        for turn in sorted(free | set(held)):
            if turn in self.deferred_starts:
                await self.send(self.speech_started_result(self.deferred_starts.pop(turn)))
            if turn in held:
                await self.send_partial(turn, held[turn])
            if turn in self.deferred_stops:
                await self.send(self.speech_stopped_result(self.deferred_stops.pop(turn)))

    async def closing(self) -> None:
        """Nothing: the last finals, then the Close."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    async def control(self, data: str) -> None:
        """The message its one field names, done."""
        name, body = message_of(data)
        await self.controls()[name](body)

    def controls(self) -> dict[str, Control]:
        return {
            "transcribeConfig": self.second_config,
            "audioChunk": self.audio_chunk,
            "endTurn": self.end_turn,
            "closeStream": self.close_stream,
        }

    async def second_config(self, message: dict[str, Any]) -> None:
        raise invalid("transcribeConfig comes once, as the stream's first message")

    async def audio_chunk(self, message: dict[str, Any]) -> None:
        unknown = sorted(set(message) - {"content"})
        if unknown:
            raise invalid(f"audioChunk has no field {echoable(unknown[0])!r}")
        await super().on_binary(base64_audio(message, "audioChunk", MAX_AUDIO_BYTES, "content"))

    async def on_binary(self, data: bytes) -> None:
        """A binary frame: refused, as Inworld's gateway takes JSON messages alone; the stream goes on."""
        raise invalid("audio comes in audioChunk messages, base64 in content; a binary frame is not one")

    async def end_turn(self, message: dict[str, Any]) -> None:
        """The turn in progress ends now: its final comes before the next message is read."""
        if message:
            raise invalid(f"endTurn has no field {echoable(sorted(message)[0])!r}")
        await self.flush_for_client()

    async def close_stream(self, message: dict[str, Any]) -> None:
        if message:
            raise invalid(f"closeStream has no field {echoable(sorted(message)[0])!r}")
        await self.end()


STREAMING = Api(
    PATH,
    "Inworld's streaming speech-to-text API",
    parse_query,
    InworldConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)
