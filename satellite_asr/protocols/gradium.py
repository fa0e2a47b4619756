"""Gradium's real-time speech-to-text API at `/api/speech/asr` (docs/gradium.md): wire messages <->
`Session` calls, so that Gradium's SDK (`gradium`), Pipecat's `GradiumSTTService` and LiveKit's
Gradium plugin reach the daemon by their URL alone.

The stream's settings come in its first message, `setup` (model, input format, `json_config`);
`ready` answers it. Audio comes as base64 `audio` messages. Each utterance's stable words go out as
`text` messages, one word each, while it is heard, the rest at its final, then `end_text`. A `step`
for every 80 ms of audio received tells the clients' turn detection whether speech is in progress:
its inactivity is 0 from the daemon's start of speech until the utterance's final is sent, 1
otherwise. `flush` ends the utterance in progress and `flushed` answers it once its words are sent;
`end_of_stream` ends the stream: the last words, `end_of_stream`, the Close 1000. An error is
`{"type": "error", "message", "code"}`, `code` a WebSocket close code as Gradium's; a bad `setup` is
followed by that Close, and any later error leaves the stream going (the daemon's choice: Pipecat
reads on after an error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionEvent
from satellite_asr.protocols import ProtocolError, checked_language, echoable, gradium_error, json_object
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    SettingsMessageConnection,
    StreamParams,
    base64_audio,
    check_fields,
    check_names,
    is_control,
    number_within,
    refusing_in_band,
)
from satellite_asr.session import SessionOptions

PATH = "/api/speech/asr"
PROTOCOL = "gradium"
INPUT_FORMATS = {"pcm": 24000, "pcm_8000": 8000, "pcm_16000": 16000, "pcm_24000": 24000}
"""Gradium's raw PCM formats (16-bit mono) and their rates; its `wav` and `opus` are refused."""
LANGUAGES = ("en", "de", "es", "fr", "pt", "any")
"""Gradium's languages; `any` asks for detection (the daemon's engine decides)."""
DELAYS = (7, 8, 10, 12, 14, 16, 20, 24, 36, 48)
"""Gradium's `delay_in_frames` values: checked, not applied (the daemon's endpointing sets the pace)."""
DEFAULT_DELAY = 10
MAX_TEMPERATURE = 2.0
STEP_S = 0.08
"""One `step` per 80 ms of audio, as Gradium's model steps."""
HORIZONS = (0.5, 1.0, 2.0, 3.0)
"""The `horizon_s` of each `vad` entry of a step: clients read the third (LiveKit) or the one
nearest 3 s (Pipecat)."""
MAX_AUDIO_BYTES = 262144
CLOSE_CODES = {
    "idle_timeout": WSCloseCode.GOING_AWAY,
    "shutdown": WSCloseCode.GOING_AWAY,
    "engine_error": WSCloseCode.INTERNAL_ERROR,
    "server_busy": WSCloseCode.TRY_AGAIN_LATER,
    "timeout": WSCloseCode.POLICY_VIOLATION,
}
"""The close code an error's `code` names for each of the daemon's error codes; any other is input
refused, 1008 (Gradium's policy violation)."""


@dataclass(frozen=True)
class GradiumSetup:
    """The stream's settings from its `setup`."""

    model: str
    input_format: str
    language: str | None
    delay_in_frames: int
    client_req_id: str | None
    """The SDK's id for multiplexing its requests, named in each `text` and `end_text`."""

    @property
    def sample_rate(self) -> int:
        return INPUT_FORMATS[self.input_format]

    @property
    def frame_size(self) -> int:
        """The samples of one step at the input's rate."""
        return round(self.sample_rate * STEP_S)

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings, partials=True, language=self.language or core.settings.default_language
        )


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in `setup`; the URL carries none (the daemon's `api_key` aside)."""
    check_names(query, set(), set())
    return None


def parse_setup(message: WSMessage, core: Core) -> GradiumSetup:
    """The stream's settings, or `ProtocolError` `invalid_setup` saying what is wrong."""
    setup = json_object(message.data) if message.type == WSMsgType.TEXT else "is audio"
    if isinstance(setup, str):
        raise ProtocolError("invalid_setup", f"the first message must be the setup, a JSON object; this one {setup}")
    if setup.get("type") != "setup":
        raise ProtocolError("invalid_setup", "the first message must be the setup (type 'setup')")
    unknown = sorted(set(setup) - {"type", "model_name", "input_format", "json_config", "client_req_id"})
    if unknown:
        raise ProtocolError("invalid_setup", f"setup has no field {echoable(unknown[0])!r}")
    model = setup.get("model_name", "default")
    if not isinstance(model, str) or not model.strip():
        raise ProtocolError("invalid_setup", "model_name must be a model's name, e.g. default")
    input_format = setup.get("input_format", "pcm")
    if not isinstance(input_format, str) or input_format not in INPUT_FORMATS:
        named = echoable(str(input_format))
        raise ProtocolError(
            "invalid_setup", f"input_format {named!r}: this server takes raw PCM, one of {', '.join(INPUT_FORMATS)}"
        )
    client_req_id = setup.get("client_req_id")
    if client_req_id is not None and not isinstance(client_req_id, str):
        raise ProtocolError("invalid_setup", "client_req_id must be a text")
    language, delay = json_config(setup.get("json_config"), core)
    return GradiumSetup(model, input_format, language, delay, client_req_id)


def json_config(value: object, core: Core) -> tuple[str | None, int]:
    """`json_config`'s language and delay: an object, or its JSON text as Gradium's SDK sends it."""
    config = json_object(value) if isinstance(value, str) else value
    if value is None:
        config = {}
    if not isinstance(config, dict):
        problem = config if isinstance(config, str) else "is not an object"
        raise ProtocolError("invalid_setup", f"json_config must be a JSON object; this one {problem}")
    unknown = sorted(set(config) - {"language", "delay_in_frames", "temp"})
    if unknown:
        raise ProtocolError("invalid_setup", f"json_config has no field {echoable(unknown[0])!r}")
    language = config.get("language", "en")
    if language not in LANGUAGES:
        raise ProtocolError("invalid_setup", f"json_config.language must be one of {', '.join(LANGUAGES)}")
    delay = config.get("delay_in_frames", DEFAULT_DELAY)
    if not isinstance(delay, int) or isinstance(delay, bool) or delay not in DELAYS:
        raise ProtocolError(
            "invalid_setup", f"json_config.delay_in_frames must be one of {', '.join(map(str, DELAYS))}"
        )
    temperature = config.get("temp", 0.0)
    if not number_within(temperature, 0.0, MAX_TEMPERATURE, False):
        raise ProtocolError("invalid_setup", f"json_config.temp must be a number from 0 to {MAX_TEMPERATURE:g}")
    if language == "any":
        return None, delay
    try:
        return checked_language(core, language, "json_config.language"), delay
    except ProtocolError as exc:
        raise ProtocolError("invalid_setup", exc.message) from None


def error_event(code: str, message: str) -> dict[str, Any]:
    """Gradium's error: the sentence, and the close code of its kind; `message` may quote the client."""
    return gradium_error(message, int(CLOSE_CODES.get(code, WSCloseCode.POLICY_VIOLATION)))


def flush_id_echoable(value: object) -> bool:
    """Whether a `flush_id` is a text or a JSON number, which `flushed` echoes: any whole number, a
    finite fraction (JSON has no Infinity), not true or false."""
    if isinstance(value, bool):
        return False
    return isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value))


def ends_stream(message: WSMessage) -> bool:
    """`end_of_stream`: what the client sent before its Close is still wanted."""
    return is_control(message, "end_of_stream")


class GradiumConnection(SettingsMessageConnection):
    """A client of the real-time API: its setup, audio, flushes and end; each utterance's words,
    a step per 80 ms, `flushed` per flush and `end_of_stream` at the end."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    idle_means_missing_audio = True  # Gradium's SDK does not reconnect (docs/gradium.md)
    refusal_closes = CLOSE_CODES
    """A refused setup (no session yet) is followed by the Close; later errors leave the stream going."""

    steps = 0
    """The steps sent: one per 80 ms of audio received."""
    received = 0
    """The samples of audio received, at the input's rate: the steps count them as they come, not as
    the resampler lets them out (at 24 kHz a frame late, at 8 kHz two frames at a time)."""

    def parse_settings(self, message: WSMessage) -> GradiumSetup:
        """The setup; `ready` answers it once the session is open."""
        self.sent: dict[int, int] = {}
        """How many words of each utterance were sent as `text`."""
        return parse_setup(message, self.core)

    @property
    def setup(self) -> GradiumSetup:
        assert isinstance(self.params, GradiumSetup)
        return self.params

    async def opened(self) -> None:
        """`ready`: `delay_in_tokens` 1, as the daemon's words are final when sent (LiveKit's plugin
        waits that many steps after a turn's end before its final)."""
        await self.send(
            {
                "type": "ready",
                "request_id": self.request_id,
                "model_name": self.setup.model,
                "sample_rate": self.setup.sample_rate,
                "frame_size": self.setup.frame_size,
                "delay_in_frames": self.setup.delay_in_frames,
                "delay_in_tokens": 1,
                "text_stream_names": [],
            }
        )

    async def send_event(self, event: SessionEvent) -> None:
        """Partials as their stable words only: a `text` cannot be taken back."""
        if isinstance(event, PartialTranscript):
            event = replace(event, text=event.stable_text)
        await super().send_event(event)

    async def words(self, utterance_id: int, text: str, start: float) -> None:
        """A `text` for each word of `text` past those of the utterance sent (the engine gives no word
        timings: each starts where the utterance does)."""
        words = text.split()
        for word in words[self.sent.get(utterance_id, 0) :]:
            await self.send({"type": "text", "text": word, "start_s": round(start, 3), **self.ids})
        self.sent[utterance_id] = max(len(words), self.sent.get(utterance_id, 0))

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.words(utterance_id, text, self.pending.starts.get(utterance_id, self.seconds))

    @property
    def ids(self) -> dict[str, Any]:
        """What names a word's stream (none) and request (the setup's `client_req_id`, if any)."""
        if self.setup.client_req_id is None:
            return {"stream_id": None}
        return {"stream_id": None, "client_req_id": self.setup.client_req_id}

    async def final(self, event: FinalTranscript) -> None:
        """The words of the final not sent yet, then `end_text` with where the utterance ended. The
        utterance is over (its steps inactive) only after `end_text`: a step sent while the last words
        wait on a slow client must not end the client's turn before them."""
        await self.words(event.utterance_id, event.text, event.start)
        if self.sent.pop(event.utterance_id, 0):
            await self.send({"type": "end_text", "stop_s": event.span[1], **self.ids})
        self.pending.final(event.utterance_id)
        await self.release_held()

    async def steps_due(self) -> None:
        """A `step` for each 80 ms of audio received since the last."""
        speaking = bool(self.pending.starts)
        inactivity = 0.0 if speaking else 1.0
        while (self.steps + 1) * self.setup.frame_size <= self.received:
            self.steps += 1
            vad = [{"horizon_s": horizon, "inactivity_prob": inactivity} for horizon in HORIZONS]
            total = round(self.steps * STEP_S, 3)
            await self.send(
                {
                    "type": "step",
                    "vad": vad,
                    "step_idx": self.steps,
                    "step_duration_s": STEP_S,
                    "total_duration_s": total,
                }
            )

    async def closing(self) -> None:
        await self.send({"type": "end_of_stream"})

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    async def on_binary(self, data: bytes) -> None:
        raise ProtocolError("invalid_message", "audio comes as audio messages (base64 PCM), not binary")

    def controls(self) -> dict[str, Control]:
        return {"audio": self.audio, "flush": self.flush, "end_of_stream": self.end_of_stream}

    async def audio(self, message: dict[str, Any]) -> None:
        check_fields(message, "audio", {"audio"})
        data = base64_audio(message, "audio", MAX_AUDIO_BYTES)
        await super().on_binary(data)
        self.received += len(data) // 2  # whole 16-bit samples: `on_binary` refused any other
        await self.steps_due()

    async def flush(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; `flushed` once its words are sent, with the client's id."""
        check_fields(message, "flush", {"flush_id"})
        flush_id = message.get("flush_id")
        if flush_id is not None and not flush_id_echoable(flush_id):
            raise ProtocolError("invalid_message", "flush's flush_id must be a number or a text")
        await self.flush_for_client()
        await self.send({"type": "flushed", "flush_id": flush_id})

    async def end_of_stream(self, message: dict[str, Any]) -> None:
        check_fields(message, "end_of_stream", set())
        await self.end()


REALTIME = Api(
    PATH,
    "Gradium's real-time speech-to-text API",
    parse_query,
    GradiumConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)
