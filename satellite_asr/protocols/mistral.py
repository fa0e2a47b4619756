"""Mistral's Voxtral realtime transcription API at `/v1/audio/transcriptions/realtime`
(docs/mistral.md): wire messages <-> `Session` calls, so that Mistral's SDK (`mistralai`) and the
LiveKit and Pipecat services built on it reach the daemon by their server URL alone.

The URL names the model; the stream opens at once with `session.created` (16 kHz `pcm_s16le`
unless a `session.update` changes it before the audio). Audio comes as base64 `input_audio.append`
messages. Mistral's API has no endpointing of its own: its clients send `input_audio.flush` at
their VAD's end of speech and `input_audio.end` at the end. The daemon's endpointing still cuts
utterances: each utterance's stable words go out as `transcription.text.delta`s while it is
heard, then as a `transcription.segment` at its final; a flush (or the end) answers with
`transcription.done`, the text of the segments since the last one, which is what the clients take
as the final transcript. An error is `{"type": "error", "error": {"message", "code"}}`, and the
stream goes on: every client would drop the stream on an error that ended it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from aiohttp import WSCloseCode, WSMessage, web
from multidict import MultiMapping

from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionEvent
from satellite_asr.protocols import ProtocolError, ReadAhead, echoable
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    StreamParams,
    base64_audio,
    check_fields,
    check_names,
    is_control,
    number_within,
    refusing_in_band,
)
from satellite_asr.session import SessionOptions

PATH = "/v1/audio/transcriptions/realtime"
PROTOCOL = "mistral"
ENCODINGS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "pcm_mulaw": "pcmu", "pcm_alaw": "pcma"}
"""Mistral's names of the raw formats this server decodes, and its own (`pcm_s32le` and
`pcm_f16le` are Mistral's too, and refused)."""
MAX_APPEND_BYTES = 262144
"""Most decoded audio one `input_audio.append` may hold, as Mistral documents."""
MAX_DELAY_MS = 10000
STATUS = {
    "timeout": 408,
    "idle_timeout": 408,
    "engine_error": 500,
    "server_busy": 503,
    "shutdown": 503,
}
"""Mistral's HTTP-like `code` of each of the daemon's error codes; any other is input refused, 400."""


@dataclass(frozen=True)
class MistralFormat:
    """The stream's audio format: Mistral's default until a `session.update` before the audio."""

    model: str
    encoding: str = "pcm_s16le"
    sample_rate: int = 16000
    delay_ms: int | None = None
    """`target_streaming_delay_ms`: echoed, not applied (the daemon's endpointing sets the pace)."""

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=core.settings.default_language)


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams:
    """The model the URL names (taken, not applied: the daemon's engine transcribes)."""
    check_names(query, {"model"}, set())
    model = query.get("model", "")
    if not model.strip():
        raise ParameterError("model", "model is required, e.g. ?model=voxtral-mini-transcribe-realtime-2602")
    return MistralFormat(model)


def error_event(code: str, message: str) -> dict[str, Any]:
    """Mistral's in-stream error; `message` may quote the client."""
    return {"type": "error", "error": {"message": echoable(message), "code": STATUS.get(code, 400)}}


def ends_stream(message: WSMessage) -> bool:
    """`input_audio.end`: what the client sent before its Close is still wanted."""
    return is_control(message, "input_audio.end")


class MistralConnection(InOrderConnection):
    """A client of the realtime API: its session updates, audio, flushes and end; each utterance's
    deltas and segment, and a `transcription.done` per flush."""

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
        assert isinstance(params, MistralFormat)
        self.format = params
        self.audio_started = False
        self.sent: dict[int, str] = {}
        """Each utterance's words sent as deltas so far (its stable text)."""
        self.spoken = False
        """Deltas were sent since the last `transcription.done`: the next utterance's start with a space."""
        self.segments: list[dict[str, Any]] = []
        """The segments since the last `transcription.done`."""
        self.language: str | None = None
        self.done_at = 0.0

    def session(self) -> dict[str, Any]:
        audio_format = {"encoding": self.format.encoding, "sample_rate": self.format.sample_rate}
        return {
            "request_id": self.request_id,
            "model": self.format.model,
            "audio_format": audio_format,
            "target_streaming_delay_ms": self.format.delay_ms,
        }

    async def opened(self) -> None:
        await self.send({"type": "session.created", "session": self.session()})

    async def send_event(self, event: SessionEvent) -> None:
        """Partials as their stable text only: deltas append, and cannot take back a word."""
        if isinstance(event, PartialTranscript):
            event = replace(event, text=event.stable_text)
        await super().send_event(event)

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.extend(utterance_id, text.strip())

    async def extend(self, utterance_id: int, text: str) -> None:
        """A delta of what `text` adds to the utterance's words sent; text not continuing them waits
        for `transcription.done`, which carries the final's."""
        sent = self.sent.get(utterance_id, "")
        if len(text) > len(sent) and text.startswith(sent):
            lead = " " if self.spoken and not sent else ""
            self.sent[utterance_id] = text
            self.spoken = True
            await self.send({"type": "transcription.text.delta", "text": lead + text[len(sent) :]})

    async def final(self, event: FinalTranscript) -> None:
        """The rest of the utterance's words as a delta, its language when new, its segment; then the
        partials it held back."""
        self.pending.final(event.utterance_id)
        text = event.text.strip()
        await self.extend(event.utterance_id, text)
        self.sent.pop(event.utterance_id, None)
        if text:
            language = event.language or self.core.settings.default_language
            if language and language != self.language:
                self.language = language
                await self.send({"type": "transcription.language", "audio_language": language})
            start, end = event.span
            segment = {"text": text, "start": start, "end": end}
            self.segments.append(segment)
            await self.send({"type": "transcription.segment", **segment})
        await self.release_held()

    async def done(self) -> None:
        """`transcription.done` with the segments since the last, when there are any."""
        if not self.segments:
            return
        segments, self.segments, self.spoken = self.segments, [], False
        seconds, self.done_at = self.seconds - self.done_at, self.seconds
        await self.send(
            {
                "type": "transcription.done",
                "model": self.format.model,
                "text": " ".join(segment["text"] for segment in segments),
                "language": self.language,
                "segments": [{"type": "transcription_segment", **segment} for segment in segments],
                "usage": {
                    "prompt_audio_seconds": round(seconds),
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "total_tokens": 0,
                },
            }
        )

    async def closing(self) -> None:
        await self.done()

    async def close_by_server(self, reason: str) -> None:
        """Idle timeout or shutdown, once the finals are sent: the last `transcription.done`, Mistral's
        error (408, 503), then the Close (1001)."""
        self.finished = True
        try:
            await self.done()
            await self.error(reason, self.server_close_sentence(reason), counted=True)
        finally:
            await self.close(WSCloseCode.GOING_AWAY, reason)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Mistral's error; the stream goes on (an engine failure loses its utterance alone)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        await self.send(error_event(code, message))

    async def on_binary(self, data: bytes) -> None:
        raise ProtocolError("invalid_message", "audio comes as input_audio.append messages (base64), not binary")

    def controls(self) -> dict[str, Control]:
        return {
            "input_audio.append": self.append,
            "input_audio.flush": self.flush,
            "input_audio.end": self.end_audio,
            "session.update": self.update,
        }

    async def append(self, message: dict[str, Any]) -> None:
        check_fields(message, "input_audio.append", {"audio"})
        data = base64_audio(message, "input_audio.append", MAX_APPEND_BYTES)
        await super().on_binary(data)
        self.audio_started = self.audio_started or bool(data)  # a refused or empty append fed none

    async def flush(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; the segments since the last done come as one."""
        check_fields(message, "input_audio.flush", set())
        await self.flush_for_client()
        await self.done()

    async def end_audio(self, message: dict[str, Any]) -> None:
        check_fields(message, "input_audio.end", set())
        await self.end()

    async def update(self, message: dict[str, Any]) -> None:
        """A new audio format or delay, before the audio only (as Mistral); `session.updated` answers."""
        check_fields(message, "session.update", {"session"})
        session = message.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("invalid_message", "session.update needs a session object")
        given = {name: value for name, value in session.items() if value is not None}
        unknown = sorted(set(given) - {"audio_format", "target_streaming_delay_ms"})
        if unknown:
            raise ProtocolError("invalid_message", f"session has no field {echoable(unknown[0])!r}")
        if given and self.audio_started:
            raise ProtocolError("invalid_message", "the session cannot change once audio has started")
        updated = self.format
        delay = given.get("target_streaming_delay_ms")
        if "target_streaming_delay_ms" in given:
            if not number_within(delay, 0, MAX_DELAY_MS, True):
                raise ProtocolError(
                    "invalid_message", f"target_streaming_delay_ms must be a whole number from 0 to {MAX_DELAY_MS}"
                )
            updated = replace(updated, delay_ms=delay)
        if "audio_format" in given:
            encoding, rate = audio_format(given["audio_format"])
            updated = replace(updated, encoding=encoding, sample_rate=rate)
        self.format = self.params = updated
        assert self.input is not None
        self.input.decoder = updated.decoder()
        await self.send({"type": "session.updated", "session": self.session()})


def audio_format(value: object) -> tuple[str, int]:
    """`audio_format`'s encoding and rate, raw PCM this server decodes."""
    if not isinstance(value, dict) or set(value) - {"encoding", "sample_rate"}:
        raise ProtocolError("invalid_audio_format", "audio_format is {encoding, sample_rate}")
    encoding, rate = value.get("encoding"), value.get("sample_rate")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError("invalid_audio_format", f"audio_format.encoding must be one of {', '.join(ENCODINGS)}")
    if not isinstance(rate, int) or not number_within(rate, MIN_RATE, MAX_RATE, True):
        raise ProtocolError(
            "invalid_audio_format", f"audio_format.sample_rate must be a whole number from {MIN_RATE} to {MAX_RATE}"
        )
    return encoding, rate


REALTIME = Api(
    PATH,
    "Mistral's realtime transcription API",
    parse_query,
    MistralConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)
