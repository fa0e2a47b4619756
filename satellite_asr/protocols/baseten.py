"""Baseten's streaming transcription WebSocket at `/environments/production/websocket` (docs/baseten.md):
wire messages <-> `Session` calls, so that LiveKit's Baseten plugin (`baseten.STT`, its `whisper` and
its `qwen3-asr` model) reaches the daemon by its `model_endpoint` alone.

The stream's settings come in its first message, the metadata (`whisper_params`, `streaming_params`,
`streaming_vad_config`); nothing answers it. Audio comes as binary frames of raw PCM (the Whisper
deployment's way) or as base64 `input_audio_buffer.append` messages (Qwen3-ASR's). Each utterance's
partials (with `enable_partial_transcripts`) and its final are `transcription` messages, `is_final`
false then true, the text in `transcript` and in one segment. `input_audio_buffer.commit` ends the
utterance in progress: the final that answers it (an empty one when nothing was heard) carries
`is_end_of_audio_flush`. `{"terminate_session": true}` ends the stream: the last finals, then the
Close 1000. An error is `{"type": "error", "code", "message"}`; a refused metadata is followed by the
Close 1008, any later error leaves the stream going.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.engines.qwen3_prompt import LANGUAGES as QWEN3_LANGUAGES
from satellite_asr.events import FinalTranscript, seconds_span
from satellite_asr.protocols import ProtocolError, checked_language, echoable, json_object
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    SettingsMessageConnection,
    StreamParams,
    base64_audio,
    check_fields,
    check_names,
    confidence,
    number_within,
    refusing_in_band,
)
from satellite_asr.session import SessionOptions

PATH = "/environments/production/websocket"
PROTOCOL = "baseten"
ENCODINGS = {"pcm_s16le": "s16le", "pcm_mulaw": "pcmu"}
"""Baseten's names of its raw encodings, and the daemon's."""
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
SECTIONS = {
    "whisper_params": {"audio_language", "show_word_timestamps", "language_options"},
    "streaming_params": {
        "encoding",
        "sample_rate",
        "enable_partial_transcripts",
        "partial_transcript_interval_s",
        "final_transcript_max_duration_s",
    },
    "streaming_vad_config": {"threshold", "min_silence_duration_ms", "speech_pad_ms"},
}
"""The metadata's sections and their fields; any other is refused, as Baseten's schema forbids extras."""
CHECKED_NOT_APPLIED = {
    "whisper_params.show_word_timestamps",
    "whisper_params.language_options",
    "streaming_params.partial_transcript_interval_s",
    "streaming_params.final_transcript_max_duration_s",
    "streaming_vad_config.threshold",
    "streaming_vad_config.min_silence_duration_ms",
    "streaming_vad_config.speech_pad_ms",
}
"""Taken and checked, but the daemon's own endpointing and engine decide (docs/baseten.md)."""
NAMES = {name.lower(): code for code, name in QWEN3_LANGUAGES.items()}
"""Qwen3-ASR's language names (the plugin's `qwen3-asr` model sends `English`, not `en`)."""
MAX_LANGUAGE_OPTIONS = 100
MAX_AUDIO_BYTES = 262144


@dataclass(frozen=True)
class BasetenMetadata:
    """The stream's settings from its metadata."""

    encoding: str
    sample_rate: int
    partials: bool
    language: str | None

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=self.partials, language=self.language)


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in the metadata; the URL carries none (the daemon's `api_key` aside)."""
    check_names(query, set(), set())
    return None


def invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_metadata", message)


def section(metadata: dict[str, Any], name: str) -> dict[str, Any]:
    """One of the metadata's sections (empty when left out), its fields known."""
    value = metadata.get(name, {})
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    unknown = sorted(set(value) - SECTIONS[name])
    if unknown:
        raise invalid(f"{name} has no field {echoable(unknown[0])!r}")
    return value


def number(fields: dict[str, Any], section_name: str, name: str, low: float, high: float, *, whole: bool) -> None:
    """A field checked: a number (a whole one if `whole`) from `low` to `high`, or left out."""
    if name in fields and not number_within(fields[name], low, high, whole):
        kind = "a whole number" if whole else "a number"
        raise invalid(f"{section_name}.{name} must be {kind} from {low:g} to {high:g}")


def flag(fields: dict[str, Any], section_name: str, name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise invalid(f"{section_name}.{name} must be true or false")
    return value


def language(core: Core, value: object, param: str) -> str | None:
    """The engine's code for a language named by code (`en`) or by Qwen3-ASR's name (`English`);
    None for `auto` (the engine detects it)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, str) and value.strip().lower() in NAMES:
        value = NAMES[value.strip().lower()]
    try:
        return checked_language(core, value, param)
    except ProtocolError as exc:
        raise invalid(exc.message) from None


def parse_metadata(message: WSMessage, core: Core) -> BasetenMetadata:
    """The stream's settings, or `ProtocolError` `invalid_metadata` saying what is wrong."""
    metadata = json_object(message.data) if message.type == WSMsgType.TEXT else "is audio"
    if isinstance(metadata, str):
        raise invalid(f"the first message must be the metadata, a JSON object; this one {metadata}")
    unknown = sorted(set(metadata) - set(SECTIONS))
    if unknown:
        raise invalid(f"the metadata has no field {echoable(unknown[0])!r}")
    whisper = section(metadata, "whisper_params")
    streaming = section(metadata, "streaming_params")
    vad = section(metadata, "streaming_vad_config")
    encoding = streaming.get("encoding", "pcm_s16le")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise invalid(f"streaming_params.encoding must be one of {', '.join(ENCODINGS)}")
    rate = streaming.get("sample_rate", 16000)
    if isinstance(rate, bool) or rate not in SAMPLE_RATES:
        raise invalid(f"streaming_params.sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}")
    rate = int(rate)  # 8000.0 is 8000, as Baseten's schema takes it: the decoder counts whole samples
    partials = flag(streaming, "streaming_params", "enable_partial_transcripts", True)
    number(streaming, "streaming_params", "partial_transcript_interval_s", 0.05, 60, whole=False)
    number(streaming, "streaming_params", "final_transcript_max_duration_s", 1, 3600, whole=False)
    number(vad, "streaming_vad_config", "threshold", 0, 1, whole=False)
    number(vad, "streaming_vad_config", "min_silence_duration_ms", 0, 60000, whole=True)
    number(vad, "streaming_vad_config", "speech_pad_ms", 0, 10000, whole=True)
    flag(whisper, "whisper_params", "show_word_timestamps", True)
    options = whisper.get("language_options", [])
    if not isinstance(options, list) or len(options) > MAX_LANGUAGE_OPTIONS:
        raise invalid(f"whisper_params.language_options must be a list of at most {MAX_LANGUAGE_OPTIONS} languages")
    for option in options:
        if language(core, option, "whisper_params.language_options") is None:
            raise invalid("whisper_params.language_options lists languages; auto is not one")
    named = language(core, whisper.get("audio_language", "en"), "whisper_params.audio_language")
    return BasetenMetadata(encoding, rate, partials, named)


def error_event(code: str, message: str) -> dict[str, Any]:
    """The error message (`message`, which the `qwen3-asr` model's stream raises); `message` may quote the client."""
    return {"type": "error", "code": code, "message": echoable(message)}


def ends_stream(message: WSMessage) -> bool:
    """`{"terminate_session": true}`: what the client sent before its Close is still wanted."""
    if message.type != WSMsgType.TEXT:
        return False
    parsed = json_object(message.data)
    return isinstance(parsed, dict) and parsed.get("terminate_session") is True


class BasetenConnection(SettingsMessageConnection):
    """A client of the streaming API: its metadata, audio, commits and end; each utterance's
    `transcription` messages."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"

    def parse_settings(self, message: WSMessage) -> BasetenMetadata:
        return parse_metadata(message, self.core)

    @property
    def metadata(self) -> BasetenMetadata:
        assert isinstance(self.params, BasetenMetadata)
        return self.params

    async def opened(self) -> None:
        """Nothing: Baseten answers the metadata with none."""

    def transcription(
        self, text: str, start: float, end: float, *, final: bool, language: str | None, sureness: float
    ) -> dict[str, Any]:
        """One `transcription`: the text as `transcript` and as one segment spanning it (the engine
        gives no word timings)."""
        start, end = seconds_span(start, end)
        return {
            "type": "transcription",
            "is_final": final,
            "transcript": text,
            "segments": [{"text": text, "start_time": start, "end_time": end}] if text else [],
            "confidence": sureness,
            "language_code": language or self.metadata.language or "",
        }

    def partials_wanted(self) -> bool:
        return self.metadata.partials

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, self.seconds)
        await self.send(self.transcription(text.strip(), start, self.seconds, final=False, language=None, sureness=0.0))

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final; an empty one only where it answers a commit (the `qwen3-asr` model's
        stream ends on it)."""
        shown = self.pending.final(event.utterance_id)
        flushed = self.answers_flush(event.utterance_id)
        if event.text.strip() or flushed or shown:
            message = self.transcription(
                event.text.strip(),
                event.start,
                event.end,
                final=True,
                language=event.language,
                sureness=confidence(event),
            )
            await self.send({**message, "is_end_of_audio_flush": flushed})
        await self.release_held()

    async def closing(self) -> None:
        """Nothing: the Close ends the stream."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    async def on_text(self, data: str) -> None:
        """`terminate_session` (no `type`), else one of the `type`d messages."""
        message = json_object(data)
        if isinstance(message, dict) and "terminate_session" in message:
            if set(message) != {"terminate_session"} or message["terminate_session"] is not True:
                raise ProtocolError("invalid_message", 'the end of the stream is {"terminate_session": true} alone')
            await self.end()
            return
        await super().on_text(data)

    def controls(self) -> dict[str, Control]:
        return {"input_audio_buffer.append": self.append, "input_audio_buffer.commit": self.commit}

    async def append(self, message: dict[str, Any]) -> None:
        check_fields(message, "input_audio_buffer.append", {"audio"})
        await self.on_binary(base64_audio(message, "input_audio_buffer.append", MAX_AUDIO_BYTES))

    async def commit(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; an empty final answers it when no final did."""
        check_fields(message, "input_audio_buffer.commit", set())
        if not await self.flush_for_client():
            empty = self.transcription("", self.seconds, self.seconds, final=True, language=None, sureness=0.0)
            await self.send({**empty, "is_end_of_audio_flush": True})


STREAMING = Api(
    PATH,
    "Baseten's streaming transcription API",
    parse_query,
    BasetenConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)
