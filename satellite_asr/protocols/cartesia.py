"""Cartesia's streaming speech-to-text API at `/stt/websocket` (docs/cartesia.md): wire messages <->
`Session` calls.

The stream's settings are the URL's query: a bad one is refused after the upgrade, in Cartesia's
error event (`refused_in_band`). Audio comes as binary messages of raw PCM; the commands are plain text:
`finalize` ends the utterance in progress now and is answered by `flush_done`, `close` (the SDK's)
or `done` (Pipecat's) ends the stream: its finals, `done`, then the Close. Each utterance gives a
`transcript` per partial (`is_final` false) and one with its final (`is_final` true); each text is
the delta after the finals before it, so a text after an earlier one starts with a space. Input
refused mid-stream is an `error` message with `done` false, and the stream goes on.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, ReadAhead, cartesia_error, echoable
from satellite_asr.protocols.iso639 import declared_language
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    ParametersRefused,
    StreamingConnection,
    StreamParams,
    check_names,
    fraction_parameter,
    refuse_features,
    refuse_in_band,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/stt/websocket"
PROTOCOL = "cartesia"
ENCODINGS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "pcm_mulaw": "pcmu", "pcm_alaw": "pcma"}
"""Cartesia's names of the encodings this server decodes, and its own; `pcm_s32le` and `pcm_f16le`
are refused."""
UNUSED = {"min_volume": (0.0, 1.0), "max_silence_duration_secs": (0.0, 3600.0)}
"""Cartesia's endpointing settings, in their ranges: checked, not used. The daemon's turn detection
decides when an utterance ends."""
REFUSED_WHEN_GIVEN = {
    "access_token": "access tokens (send the daemon's api_key as X-API-Key, or as ?api_key= from a browser)"
}
"""What a client may ask for that this server does not do: refused rather than silently missing."""
END_COMMANDS = ("close", "done")
"""What ends the stream: `close` as Cartesia's SDK sends it, `done` as Pipecat and Cartesia's docs do."""
STATUS = {
    "invalid_query_parameter": 400,
    "invalid_message": 400,
    "invalid_audio": 400,
    "engine_error": 422,
    "server_busy": 503,
    "idle_timeout": 408,
    "shutdown": 503,
}
"""The HTTP-like `status_code` of each error the daemon sends (500 for any other). An engine's failure
to decode one utterance is under 500: LiveKit's streams drop the connection on 500 or more, losing
that utterance's final, which follows, and the audio in flight; the stream goes on."""


def error_event(code: str, message: str, request_id: str, *, done: bool) -> dict[str, Any]:
    """Cartesia's WebSocket error event: `done` says whether the connection ends with it. `code` is
    `status_code` again: LiveKit's ink-whisper stream reads `code`, its turns stream `status_code`
    (each logs one under 500 and reconnects on one of 500 or more)."""
    status = STATUS.get(code, 500)
    body = cartesia_error(code, message, request_id)
    return {"type": "error", "done": done, "status_code": status, "code": status, **body}


@dataclass(frozen=True)
class StreamingParams:
    """The stream's settings from the URL's query."""

    encoding: str
    sample_rate: int
    language: str | None
    """The engine's code of the language declared (or the daemon's default); None: detected."""
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_params(query: MultiMapping[str], core: Core) -> StreamParams:
    return checked_query(query, core, UNUSED)


def checked_query(query: MultiMapping[str], core: Core, unused: Mapping[str, tuple[float, float]]) -> StreamingParams:
    """A stream's settings, or `ParameterError` naming the first parameter at fault; `unused`: the
    API's own settings the daemon checks in their ranges and does not apply. `model` and
    `cartesia_version` are any text: the daemon's engine serves every model and version."""
    known = {"model", "language", "encoding", "sample_rate", "cartesia_version", "keyterm", *unused}
    check_names(query, known | set(REFUSED_WHEN_GIVEN), {"keyterm"})
    refuse_features(query, {}, REFUSED_WHEN_GIVEN)
    encoding = query.get("encoding")
    if encoding not in ENCODINGS:
        given = f", got {encoding!r}" if encoding is not None else ""
        raise ParameterError("encoding", f"encoding must be one of {', '.join(ENCODINGS)}{given}")
    sample_rate = whole_parameter(query, "sample_rate", None, MIN_RATE, MAX_RATE)
    if sample_rate is None:
        raise ParameterError("sample_rate", f"sample_rate is required: the audio's rate, {MIN_RATE} to {MAX_RATE}")
    for name, (low, high) in unused.items():
        fraction_parameter(query, name, low, high)
    try:
        language = declared_language(core, ("language", query.get("language", "")), [], False)
        terms = replacing_terms(core, query.getall("keyterm", []), "keyterm")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language") from None
    return StreamingParams(encoding, sample_rate, language, terms)


def ends_stream(message: WSMessage) -> bool:
    """Whether a message ends the stream (`close` or `done`): what the client sent before its Close is still wanted."""
    return message.type == WSMsgType.TEXT and message.data in END_COMMANDS


class CartesiaErrors(StreamingConnection):
    """What Cartesia's streaming APIs (this one and the turns API) share: their error event, and how
    the server ends a stream."""

    invalid_message = "invalid_message"

    async def close_by_server(self, reason: str) -> None:
        """The idle timeout or shutdown: an `error` naming it (after the finals), then 1001."""
        self.finished = True
        with contextlib.suppress(ConnectionError):
            await self.send(error_event(reason, self.server_close_sentence(reason), self.request_id, done=True))
        await self.close(WSCloseCode.GOING_AWAY, reason)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """An `error` event; `done` when the connection ends with it (no session could open)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        await self.send(error_event(code, message, self.request_id, done=fatal))


class CartesiaConnection(CartesiaErrors, InOrderConnection):
    """A client of the streaming API: each utterance's transcripts, and the client's audio and commands."""

    protocol = PROTOCOL

    def __init__(
        self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead, params: StreamParams
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, StreamingParams)
        self.options = params
        self.sent_to = 0.0
        """Where the audio of the last transcript sent ended: the next one's `duration` runs from there."""
        self.said = False
        """A final with words was sent: the next text is a delta after it, so it starts with a space."""

    async def opened(self) -> None:
        """Nothing: Cartesia's API sends nothing before the first transcript."""

    async def closing(self) -> None:
        """`done`, when the client ends the stream."""
        await self.send({"type": "done", "request_id": self.request_id})

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final: sent when it has words or a partial of it was sent (an empty one
        then ends the speech LiveKit began); a noise without words sends nothing. Then the next
        utterance's partial held back for it."""
        spoken = self.pending.final(event.utterance_id)
        if event.text.strip() or spoken:
            await self.transcript(event.text, event.start, event.end, True, event.language)
        await self.release_held()

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, self.sent_to)
        await self.transcript(text, start, self.seconds, False, None)

    async def transcript(self, text: str, start: float, end: float, final: bool, language: str | None) -> None:
        """A `transcript`: its words each span the utterance (the engine gives no word timings);
        `duration` is the audio from the end of the transcript before to the end of this one."""
        text = text.strip()
        end = max(start, end)
        span = {"start": round(start, 3), "end": round(end, 3)}
        message: dict[str, Any] = {
            "type": "transcript",
            "request_id": self.request_id,
            "text": f" {text}" if self.said and text else text,
            "is_final": final,
            "duration": round(max(0.0, end - self.sent_to), 3),
            "words": [{"word": word, **span} for word in text.split()],
        }
        language = language or self.options.language
        if language:
            message["language"] = language
        self.sent_to = max(self.sent_to, end)
        if final and text:
            self.said = True
        await self.send(message)

    async def on_text(self, data: str) -> None:
        """A command (`controls`); `invalid_message` for any other text."""
        control = self.controls().get(data)
        if control is None:
            expected = ", ".join(self.controls())
            raise ProtocolError(self.invalid_message, f"unknown command {echoable(data)!r}; expected {expected}")
        await control({})

    def controls(self) -> dict[str, Control]:
        return {"finalize": self.finalize, "close": self.end_stream, "done": self.end_stream}

    async def finalize(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; `flush_done` follows its final (or nothing, with none)."""
        assert self.input is not None
        await self.input.flush()
        await self.send({"type": "flush_done", "request_id": self.request_id})


def refused_in_band(ends: Callable[[WSMessage], bool]) -> ParametersRefused:
    """How Cartesia's streaming and turns APIs refuse a bad query: after the upgrade, as Cartesia does
    (its model_not_found event), an `error` naming the parameter (`done`: before any other message,
    `connected` included), then the Close (1008). Pipecat's services report its sentence, the SDK
    yields it; an HTTP 400 they would report as "HTTP 400" alone."""

    async def refuse(
        core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
    ) -> web.StreamResponse:
        message = f"{exc.parameter}: {exc}"
        error = error_event("invalid_query_parameter", message, str(uuid.uuid4()), done=True)
        return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, ends)

    return refuse


STREAMING = Api(
    PATH,
    "Cartesia's streaming speech-to-text API",
    parse_params,
    CartesiaConnection,
    ends_stream,
    refused_in_band(ends_stream),
)
