"""Fireworks AI's streaming transcription API at `/v1/audio/transcriptions/streaming` (docs/fireworks.md):
wire messages <-> `Session` calls, so that LiveKit's Fireworks AI plugin (`fireworksai.STT`) reaches
the daemon by its `base_url` alone.

The stream's settings are the URL's query, checked before the upgrade (a bad one is an HTTP 400 in
OpenAI's error shape, as Fireworks' REST API answers); the key comes as `Authorization` (the key
alone, or `Bearer KEY`) or `?Authorization=KEY`. Audio comes as binary 16 kHz PCM16. Each utterance
the daemon's endpointing cuts is one segment, its `id` the utterance's number: its partials and its
final go out as `{"task", "language", "text", "words", "segments"}` messages naming that segment
alone, every word `is_final` false in a partial and true in the final (the plugin ends its turn at a
final last word). `{"checkpoint_id": ID}` and `stt.input.trace` end the utterance in progress and
are echoed once its final is sent; the id `final` also ends the stream (the Close 1000 follows).
`stt.state.clear` ends the utterance in progress and answers `stt.state.cleared`. An error is
`{"error": {"message", "type", "param", "code"}}`, and the stream goes on; the server ending the
stream (idle timeout, shutdown) is that error, then the Close 1001.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.access import error_response
from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, seconds_span
from satellite_asr.protocols import (
    ProtocolError,
    checked_biasing,
    checked_language,
    echoable,
    json_object,
    openai_error,
)
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ErrorEventConnection,
    ParameterError,
    boolean_parameter,
    check_names,
    confidence,
    fraction_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v1/audio/transcriptions/streaming"
PROTOCOL = "fireworks"
SAMPLE_RATE = 16000
"""The one rate Fireworks streams (the plugin refuses any other)."""
RESPONSE_FORMATS = {"verbose_json"}
GRANULARITIES = {"word", "segment"}
MAX_VAD_KWARGS_CHARS = 2000
"""`vad_kwargs` is checked (a dict of settings) and not applied: its text is kept short."""
VAD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A `vad_kwargs` as LiveKit's plugin sends it: its dict goes through `urlencode(..., doseq=True)`,
which iterates the dict, so the URL carries the setting's name alone, one `vad_kwargs` per name."""
PYTHON_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|True|False"
PYTHON_ITEM = re.compile(rf"\s*(['\"])[A-Za-z0-9_ .-]*\1\s*:\s*(?:{PYTHON_NUMBER})\s*")
"""One entry of a dict of names and numbers as Python writes it (`{'threshold': 0.15}`): read with
a pattern, not `ast.literal_eval`, whose AST construction CPython 3.11 can fail with a `SystemError`
when a finalizer builds another AST meanwhile (tests/test_fireworks.py)."""
SEGMENT_IDS = itertools.count(int(time.time() * 1000))
"""Segment ids, rising across every stream of the daemon and past those of a daemon before it
(they start at the clock's milliseconds): LiveKit's plugin keeps the last final segment's id across
its reconnections and skips any segment whose id is not above it, so ids that started again at 0
on a new connection would lose the commands after the reconnect."""
FINAL_ID = "final"
"""The checkpoint (or trace) id that marks the end of the client's audio."""
KNOWN = {
    "model",
    "language",
    "prompt",
    "temperature",
    "skip_vad",
    "vad_kwargs",
    "text_timeout_seconds",
    "response_format",
    "timestamp_granularities",
    "Authorization",
}
ERROR_KINDS = {
    "missing_api_key": "authentication_error",
    "invalid_api_key": "authentication_error",
    "engine_error": "server_error",
    "server_busy": "server_error",
    "idle_timeout": "server_error",
    "shutdown": "server_error",
}
"""The OpenAI `type` of each of the daemon's error codes; any other is input refused."""


@dataclass(frozen=True)
class FireworksParams:
    """The stream's settings from the URL's query."""

    language: str | None
    prompt: str
    word_times: bool
    segment_times: bool

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", SAMPLE_RATE)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, context=self.prompt)


def parse_query(query: MultiMapping[str], core: Core) -> FireworksParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    check_names(query, KNOWN, {"timestamp_granularities", "vad_kwargs"})
    model = query.get("model")
    if model is not None and not model.strip():
        raise ParameterError("model", "model must be a model's name, e.g. fireworks-asr-large")
    response_format = query.get("response_format", "verbose_json")
    if response_format not in RESPONSE_FORMATS:
        raise ParameterError(
            "response_format", f"response_format {response_format!r}: this server streams verbose_json only"
        )
    if boolean_parameter(query, "skip_vad", False):
        raise ParameterError(
            "skip_vad", "this server cannot skip its VAD: its endpointing cuts the segments; leave skip_vad out"
        )
    fraction_parameter(query, "temperature", 0.0, 1.0)
    fraction_parameter(query, "text_timeout_seconds", 1.0, 29.0)
    for value in query.getall("vad_kwargs", []):
        vad_settings(value)
    granularities = set()
    for entry in query.getall("timestamp_granularities", []):
        for granularity in entry.split(","):
            if granularity.strip() not in GRANULARITIES:
                raise ParameterError(
                    "timestamp_granularities",
                    f"timestamp_granularities {granularity.strip()!r}: use word, segment or both",
                )
            granularities.add(granularity.strip())
    prompt = query.get("prompt", "")
    try:
        language = checked_language(core, query.get("language"), "language") or core.settings.default_language
        checked_biasing(core, prompt, (), "prompt", "prompt")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language") from None
    return FireworksParams(
        language=language,
        prompt=prompt,
        word_times="word" in granularities,
        segment_times="segment" in granularities,
    )


def vad_settings(value: str) -> None:
    """One `vad_kwargs`, checked and not applied: a setting's name (as LiveKit's plugin sends its
    dict, one name each), a JSON object of names and numbers, or such a dict as Python writes it."""
    if len(value) <= MAX_VAD_KWARGS_CHARS and (VAD_NAME.fullmatch(value) or python_dict(value)):
        return
    loaded = json_object(value) if len(value) <= MAX_VAD_KWARGS_CHARS else None
    numbers = (int, float, bool)
    if not isinstance(loaded, dict) or not all(isinstance(number, numbers) for number in loaded.values()):
        raise ParameterError(
            "vad_kwargs",
            'vad_kwargs must be a setting\'s name or an object of names and numbers, e.g. {"threshold": 0.15}',
        )


def python_dict(value: str) -> bool:
    """Whether `value` is a dict of names and numbers as Python writes one."""
    inner = value.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        return False
    items = inner[1:-1]
    return not items.strip() or all(PYTHON_ITEM.fullmatch(item) for item in items.split(","))


def error_event(code: str, message: str) -> dict[str, Any]:
    """The in-stream error, in OpenAI's shape as Fireworks' API answers, the daemon's `code` in it."""
    return {"error": openai_error(code, message, kind=ERROR_KINDS.get(code, "invalid_request_error"))}


def checkpoint(message: dict[str, Any]) -> str | None:
    """The id a checkpoint (`{"checkpoint_id"}`) or trace (`stt.input.trace`) carries, if it is one."""
    if message.get("object") == "stt.input.trace":
        return str(message.get("trace_id"))
    if "object" not in message and "checkpoint_id" in message:
        return str(message["checkpoint_id"])
    return None


def ends_stream(message: WSMessage) -> bool:
    """The checkpoint (or trace) `final`: what the client sent before its Close is still wanted."""
    if message.type != WSMsgType.TEXT:
        return False
    parsed = json_object(message.data)
    return isinstance(parsed, dict) and checkpoint(parsed) == FINAL_ID


class FireworksConnection(ErrorEventConnection):
    """A client of the streaming API: its audio, checkpoints, traces and state clears; each
    utterance's partials and final as one segment's transcription messages."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    type_field = "object"

    @property
    def options(self) -> FireworksParams:
        assert isinstance(self.params, FireworksParams)
        return self.params

    async def opened(self) -> None:
        """Nothing: Fireworks says nothing before its first transcription."""
        self.segments: dict[int, int] = {}
        """Each utterance's segment id, taken from `SEGMENT_IDS` at its first message."""
        self.unfinished: int | None = None
        """The segment of an utterance whose partials had words and whose final had none: the
        plugin keeps its text until a final segment clears it, and an empty final cannot (no last
        word is final), so the next utterance takes that segment over rather than be joined to it."""

    def segment_id(self, utterance_id: int) -> int:
        if utterance_id not in self.segments:
            taken, self.unfinished = self.unfinished, None
            self.segments[utterance_id] = taken if taken is not None else next(SEGMENT_IDS)
        return self.segments[utterance_id]

    def language(self, heard: str | None) -> str:
        """The stream's language: the query's, else the one the engine heard, else the engine's first."""
        languages = self.core.engine_info.languages
        return self.options.language or heard or (languages[0] if languages else "")

    def transcription(
        self, segment_id: int, text: str, *, final: bool, span: tuple[float, float] | None, heard: str | None = None
    ) -> dict[str, Any]:
        """One segment's words so far (`final` False) or all of them (True), as the whole message's too."""
        language = self.language(heard)
        word: dict[str, Any] = {"language": language, "hallucination_score": 0.0, "is_final": final}
        if span is not None and self.options.word_times:
            word.update(start=span[0], end=span[1])  # the engine gives no word times: the segment's
        words = [{"word": token, "probability": 0.0, **word} for token in text.split()]  # a final sets it
        segment: dict[str, Any] = {"id": segment_id, "text": text, "words": words}
        if span is not None and self.options.segment_times:
            segment.update(start=span[0], end=span[1])
        return {"task": "transcribe", "language": language, "text": text, "words": words, "segments": [segment]}

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id)
        span = seconds_span(start, self.seconds) if start is not None else None
        await self.send(self.transcription(self.segment_id(utterance_id), text.strip(), final=False, span=span))

    async def final(self, event: FinalTranscript) -> None:
        """The segment's final: all its words final (none for an utterance with no words: its
        segment's empty text, which the plugin leaves unsaid, and the next utterance takes that
        segment over when a partial of it was shown), then what it held back."""
        shown = self.pending.final(event.utterance_id)
        segment_id = self.segment_id(event.utterance_id)
        message = self.transcription(segment_id, event.text.strip(), final=True, span=event.span, heard=event.language)
        sureness = confidence(event)
        for word in message["words"]:
            word["probability"] = sureness
        self.segments.pop(event.utterance_id, None)
        if shown and not message["words"]:
            self.unfinished = segment_id
        await self.send(message)
        await self.release_held()

    async def closing(self) -> None:
        """Nothing: the checkpoint `final`'s echo was sent before the Close."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    def controls(self) -> dict[str, Control]:
        return {"stt.input.trace": self.trace, "stt.state.clear": self.clear}

    async def control(self, data: str) -> None:
        """Fireworks' legacy `{"checkpoint_id"}` has no `object`; the other controls name theirs."""
        message = json_object(data)
        if isinstance(message, dict) and "object" not in message and "checkpoint_id" in message:
            await self.checkpoint(message)
            return
        try:
            await super().control(data)
        except ProtocolError as exc:
            if not isinstance(message, dict) or "object" in message:
                raise
            raise ProtocolError(
                exc.code, 'the message has no object; expected stt.input.trace, stt.state.clear or {"checkpoint_id"}'
            ) from None

    def check_id(self, message: dict[str, Any], field: str, kind: str) -> str:
        value = message.get(field)
        if not isinstance(value, str) or not value:
            raise ProtocolError(self.invalid_message, f"{kind}'s {field} must be a text")
        unknown = sorted(set(message) - {field, "object", "event_id"})
        if unknown:
            raise ProtocolError(self.invalid_message, f"{kind} has no field {echoable(unknown[0])!r}")
        return value

    async def checkpoint(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends; once its final is sent, the checkpoint echoed. `final`
        also ends the stream: the echo, then the Close 1000."""
        checkpoint_id = self.check_id(message, "checkpoint_id", "a checkpoint")
        await self.answer_after_flush({"checkpoint_id": echoable(checkpoint_id)}, checkpoint_id == FINAL_ID)

    async def trace(self, message: dict[str, Any]) -> None:
        trace_id = self.check_id(message, "trace_id", "stt.input.trace")
        answer = {"event_id": self.event_id(message), "object": "stt.output.trace", "trace_id": echoable(trace_id)}
        await self.answer_after_flush(answer, trace_id == FINAL_ID)

    async def clear(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends (its final sent: nothing heard is lost); then `stt.state.cleared`."""
        reset_id = self.check_id(message, "reset_id", "stt.state.clear")
        await self.flush_for_client()
        answer = {"event_id": self.event_id(message), "object": "stt.state.cleared", "reset_id": echoable(reset_id)}
        await self.send(answer)

    def event_id(self, message: dict[str, Any]) -> str:
        given = message.get("event_id")
        return echoable(given) if isinstance(given, str) and given else str(uuid.uuid4())

    async def answer_after_flush(self, answer: dict[str, Any], ends: bool) -> None:
        if not ends:
            await self.flush_for_client()
            await self.send(answer)
            return
        self.finished = True
        await self.finish_stream()
        await self.send(answer)
        await self.close(WSCloseCode.OK)


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.Response:
    """A bad query is refused before the upgrade: a 400 in OpenAI's shape naming the parameter."""
    return error_response(request.path, 400, "invalid_query_parameter", f"{exc.parameter}: {exc}")


STREAMING = Api(
    PATH, "Fireworks AI's streaming transcription API", parse_query, FireworksConnection, ends_stream, refuse_parameters
)
