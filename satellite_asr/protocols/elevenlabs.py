"""ElevenLabs' realtime speech-to-text API (Scribe) at `/v1/speech-to-text/realtime`
(docs/elevenlabs.md): wire messages <-> `Session` calls.

The stream's settings are the URL's query, checked after the upgrade: a bad one is an
`input_error` message naming it, then the Close. `session_started` comes first. The audio comes
base64 in JSON `input_audio_chunk` messages. Each utterance gives a `partial_transcript` per partial
and one `committed_transcript`, followed by `committed_transcript_with_timestamps` when timestamps
or the language were asked for. The daemon's turn detection commits an utterance, whichever
`commit_strategy` the client chose. A client's commit ends the utterance in progress now, and is
answered by an empty `committed_transcript` when none was. Input refused mid-stream is an
`input_error` and the stream goes on; an engine failure is a `warning`, and its commit follows.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, web
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, ReadAhead, echoable
from satellite_asr.protocols.iso639 import declared_language, three_letter
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    StreamParams,
    boolean_parameter,
    check_names,
    fraction_parameter,
    refuse_features,
    refuse_in_band,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v1/speech-to-text/realtime"
PROTOCOL = "elevenlabs-realtime"
AUDIO_FORMATS = {
    **{f"pcm_{rate}": ("s16le", rate) for rate in (8000, 16000, 22050, 24000, 44100, 48000)},
    "ulaw_8000": ("pcmu", 8000),
}
"""ElevenLabs' audio formats: the encoding and rate each names."""
COMMIT_STRATEGIES = ("manual", "vad")
FRACTIONS = {"vad_silence_threshold_secs": (0.3, 3.0), "vad_threshold": (0.1, 0.9)}
WHOLE = {"min_speech_duration_ms": (50, 2000), "min_silence_duration_ms": (50, 2000)}
"""ElevenLabs' server-side VAD settings, in its ranges: checked and echoed in `session_started`, not
used. The daemon's turn detection decides when an utterance ends."""
BOOLEANS = {
    "include_timestamps",
    "include_language_detection",
    "no_verbatim",
    "filter_background_audio",
    "enable_logging",
}
"""True or false: the first two are used, the others change nothing here."""
REPEATABLE = {"keyterms", "secondary_languages"}
REFUSED_WHEN_GIVEN = {
    "entity_detection": "entity detection",
    "entity_redaction": "redaction",
    "entity_redaction_mode": "redaction",
    "transcript_edit": "transcript edits",
    "token": "single-use tokens (send the daemon's api_key as xi-api-key instead)",
}
"""Features a client may ask for that this server does not do: refused rather than silently missing."""
CHUNK_FIELDS = {"message_type", "audio_base_64", "commit", "sample_rate", "previous_text"}
INPUT_REFUSED = WSCloseCode.POLICY_VIOLATION
"""The Close after a bad query's `input_error`."""


@dataclass(frozen=True)
class RealtimeParams:
    """The stream's settings from the URL's query."""

    audio_format: str
    model_id: str
    commit_strategy: str
    language: str | None
    """The engine's code of the one language declared (or the daemon's default); None: detected."""
    language_code: str | None
    """The language as the client named it, for `session_started` (which names the daemon's
    `language` setting when the client named none)."""
    with_timestamps: bool
    """`include_timestamps` or `include_language_detection`: each commit is followed by its
    `committed_transcript_with_timestamps`."""
    terms: tuple[str, ...]
    config: Mapping[str, object]
    """The settings given that `session_started` echoes and nothing else reads."""

    @property
    def sample_rate(self) -> int:
        return AUDIO_FORMATS[self.audio_format][1]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(*AUDIO_FORMATS[self.audio_format])

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_params(query: MultiMapping[str], core: Core) -> StreamParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    known = {"model_id", "audio_format", "commit_strategy", "language_code", *FRACTIONS, *WHOLE, *BOOLEANS}
    check_names(query, known | REPEATABLE | set(REFUSED_WHEN_GIVEN), REPEATABLE)
    refuse_features(query, {}, REFUSED_WHEN_GIVEN)
    audio_format = query.get("audio_format", "pcm_16000")
    if audio_format not in AUDIO_FORMATS:
        message = f"audio_format {audio_format!r} is not one of {', '.join(AUDIO_FORMATS)}"
        raise ParameterError("audio_format", message)
    commit_strategy = query.get("commit_strategy", "manual")
    if commit_strategy not in COMMIT_STRATEGIES:
        message = f"commit_strategy must be manual or vad, got {commit_strategy!r}"
        raise ParameterError("commit_strategy", message)
    config: dict[str, object] = {}
    for name, (low, high) in FRACTIONS.items():
        if (fraction := fraction_parameter(query, name, low, high)) is not None:
            config[name] = fraction
    for name, (low, whole_high) in WHOLE.items():
        if (whole := whole_parameter(query, name, None, low, whole_high)) is not None:
            config[name] = whole
    flags = {name: boolean_parameter(query, name, False) for name in BOOLEANS}
    main = ("language_code", query.get("language_code", ""))
    secondary = [("secondary_languages", code) for code in query.getall("secondary_languages", [])]
    try:
        language = declared_language(core, main, secondary, flags["include_language_detection"])
        terms = replacing_terms(core, query.getall("keyterms", []), "keyterms")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "language_code") from None
    return RealtimeParams(
        audio_format=audio_format,
        model_id=query.get("model_id", "scribe_v2_realtime"),
        commit_strategy=commit_strategy,
        language=language,
        language_code=query.get("language_code") or None,
        with_timestamps=flags["include_timestamps"] or flags["include_language_detection"],
        terms=terms,
        config={**config, **flags},
    )


class ScribeConnection(InOrderConnection):
    """A client of the realtime API: `session_started`, each utterance's partial and committed
    transcripts, and the client's audio chunks and commits."""

    protocol = PROTOCOL
    invalid_message = "input_error"
    type_field = "message_type"

    def __init__(
        self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead, params: StreamParams
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, RealtimeParams)
        self.options = params

    async def opened(self) -> None:
        options = self.options
        config = {
            "sample_rate": options.sample_rate,
            "audio_format": options.audio_format,
            "model_id": echoable(options.model_id),
            "commit_strategy": options.commit_strategy,
            "keyterms": [echoable(term) for term in options.terms],
            **options.config,
        }
        language = options.language_code or options.language  # as the client named it, or the daemon's setting
        if language is not None:
            config["language_code"] = echoable(language)
        await self.send({"message_type": "session_started", "session_id": self.request_id, "config": config})

    async def closing(self) -> None:
        """Nothing: the API's last message is the last transcript."""

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """`input_error` for input refused, `resource_exhausted` when no session could open; an engine
        failure (counted by the session), which the stream survives with the utterance's commit still
        to come, is ElevenLabs' non-fatal `warning`: the clients end their stream on an error message
        (LiveKit reconnects on `transcriber_error`, losing that commit). `message` may quote the client."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        if counted and not fatal:
            await self.send({"message_type": "warning", "warning": echoable(message)})
            return
        kind = "resource_exhausted" if fatal else "input_error"
        await self.send({"message_type": kind, "error": echoable(message)})

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's commit: sent when it has words, when a partial of it with words was sent
        (an empty one then ends the speech LiveKit began), or when it answers the client's commit."""
        spoken = self.pending.final(event.utterance_id)
        answers = self.answers_flush(event.utterance_id)
        if event.text.strip() or spoken or answers:
            await self.committed(event.text, event.start, event.end, event.avg_logprob, event.language)
        await self.release_held()

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.send({"message_type": "partial_transcript", "text": text})

    async def committed(self, text: str, start: float, end: float, logprob: float | None, language: str | None) -> None:
        """`committed_transcript`, then with timestamps asked for its words: each spans the utterance
        (the engine gives no word timings), with the decode's log-probability per token where it
        gives one; and the language, detected or declared, as ElevenLabs names it."""
        await self.send({"message_type": "committed_transcript", "text": text})
        if not self.options.with_timestamps:
            return
        span = {"start": round(start, 3), "end": round(max(start, end), 3)}
        sure = {"logprob": round(logprob, 4)} if logprob is not None else {}
        words: list[dict[str, Any]] = []
        for word in text.split():
            if words:
                words.append({"text": " ", **span, "type": "spacing"})
            words.append({"text": word, **span, "type": "word", **sure})
        message: dict[str, Any] = {"message_type": "committed_transcript_with_timestamps", "text": text}
        language = language or self.options.language
        if language:
            message["language_code"] = three_letter(language)
        await self.send({**message, "words": words})

    def controls(self) -> dict[str, Control]:
        return {"input_audio_chunk": self.audio_chunk}

    async def audio_chunk(self, message: dict[str, Any]) -> None:
        """The chunk's audio, then its commit: refused whole (nothing fed) when a field is wrong."""
        unknown = sorted(set(message) - CHUNK_FIELDS)
        if unknown:
            raise ProtocolError("input_error", f"input_audio_chunk has no field {', '.join(unknown)}")
        audio, commit = message.get("audio_base_64"), message.get("commit", False)
        rate, previous = message.get("sample_rate"), message.get("previous_text")
        if not isinstance(audio, str):
            raise ProtocolError("input_error", "audio_base_64 must be the chunk's audio as base64 text")
        if not isinstance(commit, bool):
            raise ProtocolError("input_error", "commit must be true or false")
        if rate is not None and rate != self.options.sample_rate:
            message_text = f"sample_rate {rate!r} is not {self.options.audio_format}'s {self.options.sample_rate}"
            raise ProtocolError("input_error", message_text)
        if previous is not None and not isinstance(previous, str):
            raise ProtocolError("input_error", "previous_text must be a text")
        try:
            data = base64.b64decode(audio, validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise ProtocolError("input_error", "audio_base_64 is not valid base64") from None
        if data:
            await super().on_binary(data)
        if commit:
            await self.commit()

    async def on_binary(self, data: bytes) -> None:
        """Refused: the API's audio comes in `input_audio_chunk` messages."""
        raise ProtocolError("input_error", "audio comes base64 in input_audio_chunk messages, not as binary messages")

    async def commit(self) -> None:
        """The utterance in progress ends now; with none, an empty `committed_transcript` says so."""
        if not await self.flush_for_client():
            await self.committed("", self.seconds, self.seconds, None, None)


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query is refused after the upgrade: an `input_error` naming the parameter, then the Close."""
    error = {"message_type": "input_error", "error": echoable(f"{exc.parameter}: {exc}")}
    return await refuse_in_band(core, request, ws, error, INPUT_REFUSED, never_ends_stream)


def never_ends_stream(message: WSMessage) -> bool:
    """No message ends the stream: the client closes the connection when it has what it wants."""
    return False


SCRIBE_REALTIME = Api(
    PATH,
    "ElevenLabs' realtime speech-to-text API",
    parse_params,
    ScribeConnection,
    never_ends_stream,
    refuse_parameters,
)
