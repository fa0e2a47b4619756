"""Telnyx's standalone speech-to-text WebSocket at `/v2/speech-to-text/transcription` (docs/telnyx.md):
wire messages <-> `Session` calls, so that LiveKit's Telnyx plugin and the Telnyx SDK's
`AsyncSpeechToTextWS` / `SpeechToTextWS` reach the daemon by their URL alone.

The URL's query sets the stream (`transcription_engine`, `input_format`, `language`, ...); the key
comes as `Authorization: Bearer`. Audio comes as binary messages: with `input_format=wav` the first
one starts with the WAV header (LiveKit's plugin sends a header alone, its sizes unknown), which sets
the format and opens the session; with `linear16` (or `raw`) headerless PCM at `sample_rate`. Each
utterance's words so far are `{"type": "transcript", "transcript", "is_final": false}`, its final the
same with `is_final` true, `confidence`, `start_time` and `duration`. No message ends the stream: the
client closes the connection, or the server does (idle timeout, shutdown: the finals, an error, then
the Close 1001). An error is `{"type": "error", "error", "code"}`; a refused query or WAV header is
followed by the Close 1008, any later error leaves the stream going.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType
from multidict import MultiMapping

from satellite_asr.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, AudioFormatError, PcmDecoder, wav_stream_format
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import WEBSOCKET_ENDS, FirstMessageWait, ProtocolError, echoable
from satellite_asr.protocols.iso639 import engine_language
from satellite_asr.protocols.openai_realtime_config import TurnDetection
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ParameterError,
    SettingsMessageConnection,
    boolean_parameter,
    check_names,
    confidence,
    refuse_features,
    refusing_in_band,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v2/speech-to-text/transcription"
PROTOCOL = "telnyx"
ENGINES = {
    name.casefold(): name
    for name in (
        "Telnyx",
        "Google",
        "Deepgram",
        "Azure",
        "xAI",
        "Speechmatics",
        "Soniox",
        "Parakeet",
        "Humain",
        "Reson8",
        "Cohere",
    )
}
"""Telnyx's transcription engines, any case (LiveKit's plugin sends them lower-case, the SDK as
here): checked, not applied, since the daemon's own engine transcribes every stream."""
MODELS = {
    "fast",
    "deepgram/nova-2",
    "deepgram/nova-3",
    "latest_long",
    "latest_short",
    "command_and_search",
    "phone_call",
    "video",
    "default",
    "medical_conversation",
    "medical_dictation",
    "openai/whisper-tiny",
    "openai/whisper-large-v3-turbo",
    "xai/grok-stt",
    "speechmatics/standard",
    "speechmatics/linden-1",
    "soniox/stt-rt-v4",
    "nvidia/parakeet-v3",
    "omi-health/omi-med-stt-v1",
    "humain/realtime",
    "reson8/turns",
    "cohere/ar-stt",
}
"""Telnyx's model names: checked, not applied."""
RAW_FORMATS = {"linear16", "raw"}
"""Headerless audio: its encoding is `encoding` (16-bit PCM unless said), its rate `sample_rate`."""
REFUSED_FORMATS = {
    "mp3": "MP3 (it decodes no compressed audio); send wav or linear16",
    "linear32": "32-bit integer PCM; send wav or linear16",
}
ENCODINGS = {"linear16": "s16le", "mulaw": "pcmu", "alaw": "pcma"}
"""`encoding` of headerless audio, as the daemon's encodings."""
DETECT = {"auto", "multi"}
"""`language` values that leave the language to the engine to detect, utterance by utterance."""
MIN_ENDPOINTING_MS, MAX_ENDPOINTING_MS = 100, 10000
"""`endpointing` (ms of silence that end an utterance), within the daemon's `silence_ms` bounds."""
KNOWN = {
    "transcription_engine",
    "input_format",
    "language",
    "sample_rate",
    "channels",
    "encoding",
    "interim_results",
    "model",
    "endpointing",
    "keyterm",
    "keywords",
    "redact",
}
MAX_HEADER_BYTES = 65536
"""A WAV header's bytes before its audio, at most (chunks before `data`: metadata, filler)."""
FIRST_MESSAGE = "with input_format wav the first message must be binary audio starting with its WAV header"
REFUSED_WHEN_GIVEN = {"redact": "redaction of sensitive information (it transcribes what was said)"}


@dataclass(frozen=True)
class TelnyxParams:
    """The stream's settings from its query (and, with `input_format=wav`, its WAV header)."""

    wav: bool
    """The format comes in the first audio message's WAV header."""
    encoding: str
    sample_rate: int
    channels: int
    language: str | None
    partials: bool | None
    vad: dict[str, Any]
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(self.encoding, self.sample_rate, self.channels)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings, vad=self.vad, partials=self.partials, language=self.language, terms=self.terms
        )


def parse_params(query: MultiMapping[str], core: Core) -> TelnyxParams:
    """The query's settings (a WAV stream's format is 16 kHz PCM until its header says), or
    `ParameterError` naming the first parameter at fault."""
    check_names(query, KNOWN, {"keyterm"})
    refuse_features(query, {}, REFUSED_WHEN_GIVEN)
    engine = query.get("transcription_engine", "Telnyx")
    if engine.casefold() not in ENGINES:
        names = ", ".join(ENGINES.values())
        raise ParameterError("transcription_engine", f"unknown transcription_engine {engine!r}; one of {names}")
    model = query.get("model")
    if model is not None and model not in MODELS:
        raise ParameterError("model", f"unknown model {model!r}; one of {', '.join(sorted(MODELS))}")
    input_format = query.get("input_format", "wav").lower()
    if input_format in REFUSED_FORMATS:
        raise ParameterError("input_format", f"this server does not take {REFUSED_FORMATS[input_format]}")
    if input_format != "wav" and input_format not in RAW_FORMATS:
        raise ParameterError("input_format", f"input_format must be wav or linear16, got {input_format!r}")
    encoding_name = query.get("encoding", "linear16").lower()
    if encoding_name not in ENCODINGS:
        raise ParameterError("encoding", f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding_name!r}")
    rate = whole_parameter(query, "sample_rate", None, MIN_RATE, MAX_RATE)
    channels = whole_parameter(query, "channels", 1, 1, MAX_CHANNELS)
    if input_format != "wav" and rate is None:
        message = f"sample_rate is required with input_format {input_format}: raw audio carries no rate"
        raise ParameterError("sample_rate", message)
    partials = boolean_parameter(query, "interim_results", True) if "interim_results" in query else None
    silence = whole_parameter(query, "endpointing", None, MIN_ENDPOINTING_MS, MAX_ENDPOINTING_MS)
    turns = TurnDetection("server_vad", silence_duration_ms=silence)
    vad = {} if silence is None else turns.vad_overrides(core.settings)
    language = query_language(query, core)
    keywords = [word for entry in query.getall("keywords", []) for word in entry.split(",")]
    named = "keyterm" if "keyterm" in query else "keywords"  # the limits are over both together
    try:
        terms = replacing_terms(core, [*query.getall("keyterm", []), *keywords], named)
    except ProtocolError as exc:
        raise ParameterError.of(exc, named) from None
    wav = input_format == "wav"
    return TelnyxParams(
        wav=wav,
        encoding="s16le" if wav else ENCODINGS[encoding_name],
        sample_rate=16000 if wav or rate is None else rate,
        channels=1 if wav or channels is None else channels,
        language=language,
        partials=partials,
        vad=vad,
        terms=terms,
    )


def query_language(query: MultiMapping[str], core: Core) -> str | None:
    """The decode's language: the query's (`en`, `en-US`), none (the engine detects it) for `auto` or
    `multi`, the daemon's default when it names none."""
    asked = query.get("language", "")
    if asked.lower() in DETECT:
        return None
    if not asked:
        return core.settings.default_language
    try:
        return engine_language(core, asked, "language")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language") from None


def parse_query(query: MultiMapping[str], core: Core) -> TelnyxParams | None:
    """The settings of a headerless stream; None for a WAV stream, whose first audio message (its
    header) completes them. Either way the whole query is checked now, before the upgrade's answer."""
    params = parse_params(query, core)
    return None if params.wav else params


def error_event(code: str, message: str) -> dict[str, Any]:
    """Telnyx's stream error: the sentence in `error` (the SDK's `SttEvent.error`), the daemon's `code`."""
    return {"type": "error", "error": echoable(message), "code": code}


def ends_stream(message: WSMessage) -> bool:
    """None does: the stream ends when the client closes the connection."""
    return False


class TelnyxConnection(SettingsMessageConnection):
    """A client of the transcription WebSocket: its audio (a WAV stream's header first); each
    utterance's partials and final as `transcript` messages."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"

    async def read_settings(self, message: WSMessage) -> None:
        """A WAV stream's header, which may come in parts (a client cutting a file in chunks where
        its header holds long chunks before the audio): the rest within `first_message_timeout_s`
        of its first part (one deadline: a trickle cannot hold the slot), `MAX_HEADER_BYTES` at most;
        then the session, and any audio after it."""
        waiting = FirstMessageWait(self.reading, self.core.settings.first_message_timeout_s, "its first part")
        header = b""
        while True:
            if message.type != WSMsgType.BINARY:
                raise ProtocolError("invalid_audio", FIRST_MESSAGE)
            header += message.data
            if header[:4] != b"RIFF"[: len(header)]:
                raise ProtocolError("invalid_audio", FIRST_MESSAGE)
            try:
                whole = wav_stream_format(header) is not None
            except AudioFormatError as exc:
                raise ProtocolError("invalid_audio", str(exc)) from None
            if whole:
                break
            if len(header) > MAX_HEADER_BYTES:
                too_long = f"the WAV header has no data chunk within its first {MAX_HEADER_BYTES} bytes"
                raise ProtocolError("invalid_audio", too_long)
            more = await waiting.receive()
            if more is None:
                raise ProtocolError("timeout", waiting.expired("rest of the WAV header"))
            if more.type in WEBSOCKET_ENDS:
                self.finished = True
                return
            message = more
        await super().read_settings(WSMessage(WSMsgType.BINARY, header, None))

    def parse_settings(self, message: WSMessage) -> TelnyxParams:
        """A WAV stream's whole header (`read_settings`): its format the audio takes, and any audio after it."""
        read = wav_stream_format(message.data)
        assert read is not None, "read_settings waits for the whole header"
        encoding, rate, channels, self.first_audio = read
        params = parse_params(self.request.query, self.core)  # checked before the upgrade: the same again
        try:
            PcmDecoder(encoding, rate, channels)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", f"the WAV header's format cannot be taken: {exc}") from None
        return TelnyxParams(True, encoding, rate, channels, params.language, params.partials, params.vad, params.terms)

    first_audio = b""
    """The audio after a WAV header in the same message."""

    async def opened(self) -> None:
        """Nothing is sent: the audio after the header, if any, is fed (part of a sample is an error,
        and the stream goes on, as with any later message)."""
        audio, self.first_audio = self.first_audio, b""
        if audio:
            try:
                await self.on_binary(audio)
            except ProtocolError as exc:
                if exc.fatal:
                    raise
                await self.error(exc.code, exc.message)

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.send({"type": "transcript", "transcript": text.strip(), "is_final": False})

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final; one with no words only to take back a partial that had some."""
        shown = self.pending.final(event.utterance_id)
        if event.text.strip() or shown:
            start, end = event.span
            await self.send(
                {
                    "type": "transcript",
                    "transcript": event.text.strip(),
                    "is_final": True,
                    "confidence": confidence(event),
                    "start_time": start,
                    "duration": round(end - start, 3),
                }
            )
        await self.release_held()

    async def closing(self) -> None:
        """Nothing: the Close follows the last final."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    async def on_text(self, data: str) -> None:
        """Telnyx's stream takes no text message: refused, and the stream goes on."""
        raise ProtocolError("invalid_message", "this stream takes binary audio alone; a text message is not one")

    def controls(self) -> dict[str, Control]:
        return {}


TRANSCRIPTION = Api(
    PATH,
    "Telnyx's speech-to-text WebSocket",
    parse_query,
    TelnyxConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)
