"""xAI's real-time speech-to-text API at `/v1/stt` (docs/xai.md): wire messages <-> `Session` calls,
so that Pipecat's `XAISTTService` and LiveKit's xAI plugin reach the daemon by their URL alone.

The URL's query sets the stream; a bad one is refused after the upgrade, in xAI's `error` event
(the sentence both clients report) and a Close 1008. The stream opens with `transcript.created`;
audio comes as binary frames. The daemon's endpointing cuts utterances: each one's partials are
`transcript.partial`s with `is_final` false (with `interim_results=true`), its final one with
`is_final` and `speech_final` true restating the whole utterance. `audio.done` ends the utterance
in progress: its text comes in `transcript.done` (xAI's "remaining transcript not covered by
speech_final events"), then the Close 1000. An error is `{"type": "error", "message"}` (and the
daemon's `code`), and the stream goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, web
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, ReadAhead, checked_biasing, checked_language, echoable
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ErrorEventConnection,
    ParameterError,
    StreamParams,
    boolean_parameter,
    check_fields,
    check_names,
    fraction_parameter,
    is_control,
    refuse_features,
    refuse_in_band,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v1/stt"
PROTOCOL = "xai"
ENCODINGS = {"pcm": "s16le", "mulaw": "pcmu", "alaw": "pcma"}
"""xAI's names of its raw encodings, and the daemon's."""
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
"""The rates xAI lists; any other is refused, as xAI does."""
MAX_CHANNELS = 8
MAX_KEYTERMS = 100
"""xAI's limit of `keyterm`s, on its stream as on its upload: a list the daemon took and xAI refuses
would pass here and fail there."""
CHECKED_NOT_APPLIED = {"endpointing", "vad_threshold", "smart_turn", "smart_turn_timeout", "model"}
"""Taken and checked, but the daemon's own Silero endpointing and engine decide (docs/xai.md)."""
KNOWN = {"sample_rate", "encoding", "interim_results", "language", "keyterm", "channels", "multichannel", "diarize"}
REFUSED_WHEN_ON = {"diarize": "speaker labels", "multichannel": "a transcript per channel"}


@dataclass(frozen=True)
class XaiParams:
    """The stream's settings from the URL's query."""

    encoding: str
    sample_rate: int
    channels: int
    interim_results: bool
    language: str | None
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate, self.channels)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings, partials=self.interim_results, language=self.language, terms=self.terms
        )


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    check_names(query, KNOWN | CHECKED_NOT_APPLIED, {"keyterm"})
    refuse_features(query, REFUSED_WHEN_ON, {})
    encoding = query.get("encoding", "pcm")
    if encoding not in ENCODINGS:
        raise ParameterError("encoding", f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    rate = query.get("sample_rate", "16000")
    if rate not in {str(known) for known in SAMPLE_RATES}:
        listed = ", ".join(str(known) for known in SAMPLE_RATES)
        raise ParameterError("sample_rate", f"sample_rate must be one of {listed}, got {rate!r}")
    channels = whole_parameter(query, "channels", 1, 1, MAX_CHANNELS)
    whole_parameter(query, "endpointing", None, 0, 5000)
    fraction_parameter(query, "vad_threshold", 0.0, 1.0)
    fraction_parameter(query, "smart_turn", 0.0, 1.0)
    whole_parameter(query, "smart_turn_timeout", None, 1, 5000)
    if "model" in query and not query["model"].strip():
        raise ParameterError("model", "model is empty; leave it out or name one, e.g. grok-voice-transcribe-2.0")
    terms = tuple(term.strip() for term in query.getall("keyterm", []) if term.strip())
    if len(terms) > MAX_KEYTERMS:
        raise ParameterError("keyterm", f"{len(terms)} keyterms, over the limit of {MAX_KEYTERMS}")
    try:
        language = checked_language(core, query.get("language"), "language")
        checked_biasing(core, "", terms, "keyterm", "keyterm")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language") from None
    assert channels is not None
    return XaiParams(
        encoding=encoding,
        sample_rate=int(rate),
        channels=channels,
        interim_results=boolean_parameter(query, "interim_results", False),
        language=language or core.settings.default_language,
        terms=terms,
    )


def error_event(code: str, message: str) -> dict[str, Any]:
    """xAI's error event (`message`, which the clients report), with the daemon's `code` beside it."""
    return {"type": "error", "code": code, "message": echoable(message)}


def spanning(text: str, start: float, end: float) -> list[dict[str, Any]]:
    """xAI's `words` of an utterance's `text`, each spanning the utterance: the engine gives no word
    timings, and LiveKit takes a transcript's span from its first and last word."""
    span = {"start": round(start, 3), "end": round(max(start, end), 3)}
    return [{"text": word, **span} for word in text.split()]


def ends_stream(message: WSMessage) -> bool:
    """`audio.done`: what the client sent before its Close is still wanted."""
    return is_control(message, "audio.done")


class XaiConnection(ErrorEventConnection):
    """A client of the real-time API: its audio and `audio.done`; each utterance's partials and
    final, and `transcript.done` at the end."""

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
        assert isinstance(params, XaiParams)
        self.options = params
        self.ended_from: int | None = None
        """Set by `audio.done`: the first utterance it ends (the one in progress, or the next). Their
        forced finals are the remainder `transcript.done` carries; an earlier utterance's final,
        still decoding then, is its `speech_final` transcript as it would have been a moment before."""
        self.remainder: list[FinalTranscript] = []

    async def opened(self) -> None:
        await self.send({"type": "transcript.created"})

    def transcript(
        self, text: str, start: float, end: float, language: str | None, words: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The fields of a transcript: its words (by default each spanning the whole of it: the engine
        gives no word timings), its start and duration in seconds of the stream's audio."""
        end = max(start, end)
        return {
            "text": text,
            "words": spanning(text, start, end) if words is None else words,
            "start": round(start, 3),
            "duration": round(end - start, 3),
            "language": language or self.options.language or "",
        }

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, self.seconds)
        fields = self.transcript(text.strip(), start, self.seconds, None)
        await self.send({"type": "transcript.partial", **fields, "is_final": False, "speech_final": False})

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's words, final; with none, nothing (the clients drop a transcript without
        text). One that `audio.done` forced waits for `transcript.done`."""
        self.pending.final(event.utterance_id)
        ended = self.ended_from is not None and event.utterance_id >= self.ended_from
        if ended and not event.is_speech_final:
            self.remainder.append(event)
        elif event.text.strip():
            fields = self.transcript(event.text.strip(), event.start, event.end, event.language)
            await self.send({"type": "transcript.partial", **fields, "is_final": True, "speech_final": True})
        await self.release_held()

    async def closing(self) -> None:
        """`transcript.done` (sent by `end` alone: `audio.done` ends the stream once): the text
        `audio.done` ended (empty when every utterance had its final) and the stream's audio in seconds."""
        finals = [final for final in self.remainder if final.text.strip()]
        text = " ".join(final.text.strip() for final in finals)
        start = finals[0].start if finals else self.seconds
        end = finals[-1].end if finals else self.seconds
        words = [word for final in finals for word in spanning(final.text.strip(), final.start, final.end)]
        fields = self.transcript(text, start, end, finals[-1].language if finals else None, words)
        await self.send({"type": "transcript.done", **fields, "duration": round(self.seconds, 2)})

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        """xAI's error event; the server ending the stream sends no `transcript.done` (the client
        sent no `audio.done`)."""
        return error_event(code, message)

    def controls(self) -> dict[str, Control]:
        return {"audio.done": self.audio_done}

    async def audio_done(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; its text in `transcript.done`, then the Close."""
        check_fields(message, "audio.done", set())
        assert self.input is not None
        session = self.input.session
        self.ended_from = session.utterances if session.in_utterance else session.utterances + 1
        await self.end()


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query refused after the upgrade, in xAI's error event, whose sentence both clients
    report (an HTTP refusal they report by its status alone), then the Close 1008."""
    error = error_event("invalid_query_parameter", f"{exc.parameter}: {exc}")
    return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, ends_stream)


REALTIME = Api(PATH, "xAI's real-time speech-to-text API", parse_query, XaiConnection, ends_stream, refuse_parameters)
