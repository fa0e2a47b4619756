"""AssemblyAI's Universal-Streaming API (v3) at `/v3/ws` (docs/assemblyai.md): wire messages <-> `Session` calls.

The stream's settings are the URL's query parameters, checked after the upgrade as AssemblyAI
does: a bad one is an `Error` message (code 3006) and a Close with that code. `Begin` is sent
first; each utterance then gives `SpeechStarted`, a `Turn` for each partial (`end_of_turn`
false) and one `Turn` with its final (`end_of_turn` true). The daemon's turn detection ends a
turn; `ForceEndpoint` ends it now. `Terminate` sends what is still to come, then `Termination`.
Input refused mid-stream is a `Warning` and the stream goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, web
from multidict import MultiMapping

from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionError, SessionEvent, SpeechStarted
from satellite_asr.protocols import (
    ProtocolError,
    ReadAhead,
    checked_language,
    echoable,
)
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ParameterError,
    StreamingConnection,
    StreamParams,
    boolean_parameter,
    check_names,
    confidence,
    fraction_parameter,
    is_control,
    keep_alive,
    refuse_features,
    refuse_in_band,
    replacing_terms,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/v3/ws"
PROTOCOL = "assemblyai"
ENCODINGS = {"pcm_s16le": "s16le", "pcm_mulaw": "pcmu"}
"""AssemblyAI's names of the raw encodings this server decodes, and its own."""
INPUT_INVALID = 3006
"""AssemblyAI's code for input it refuses: an `Error` (and the Close) for a bad query, a `Warning` mid-stream."""
SERVER_ERROR = 3005
"""AssemblyAI's code for a failure of its own: here a `Warning` (an engine failure; the stream goes on)."""
TRY_AGAIN_LATER = 1013
"""The Close (and `Error`) code when no session can open (`server_busy`): as AssemblyAI's clients read it."""
SESSION_HORIZON_S = 24 * 3600
"""`Begin`'s `expires_at` is this far ahead: sessions here have no maximum length (only `idle_timeout_s` ends one)."""
WHOLE = {
    "min_turn_silence": (0, 3_600_000),
    "max_turn_silence": (0, 3_600_000),
    "min_end_of_turn_silence_when_confident": (0, 3_600_000),
    "interruption_delay": (0, 3_600_000),
    "word_finalization_max_wait_time": (0, 3_600_000),
    "turn_left_pad_ms": (0, 3_600_000),
    "speaker_labels_revision_interval_ms": (0, 3_600_000),
    "inactivity_timeout": (5, 3600),
    "previous_context_n_turns": (0, 100),
    "max_speakers": (1, 10),
}
"""Whole-number settings checked and not used: the daemon's own turn detection and VAD decide."""
FRACTIONS = {
    "end_of_turn_confidence_threshold",
    "vad_threshold",
    "voice_focus_threshold",
    "noise_suppression_threshold",
}
"""Settings from 0 to 1 checked and not used."""
BOOLEANS = {
    "format_turns",
    "formatted_finals",
    "continuous_partials",
    "language_detection",
    "filter_profanity",
    "session_heartbeat",
    "acknowledge_silence",
    "include_partial_turns",
    "customer_support_audio_capture",
}
"""True or false: `format_turns` and `language_detection` are used, the others change nothing here."""
TEXTS = {"speech_model", "prompt", "agent_context", "domain", "mode", "voice_focus", "noise_suppression_model"}
"""Free settings that change nothing here: whatever model is named, the engine's answers, and a
prompt or agent context is an instruction to AssemblyAI's model, not words the engine should expect."""
REFUSED_WHEN_ON = {"speaker_labels": "speaker labels", "redact_pii": "PII redaction"}
"""Features a client may ask for that this server does not do: asked for, they are refused rather
than silently missing; `false` is fine."""
REFUSED_WHEN_GIVEN = {
    "redact_pii_policies": "PII redaction",
    "redact_pii_sub": "PII redaction",
    "webhook_url": "webhooks",
    "webhook_auth_header_name": "webhooks",
    "webhook_auth_header_value": "webhooks",
    "llm_gateway": "the LLM gateway",
    "token": "temporary tokens (send the daemon's api_key as Authorization instead)",
}
"""Features refused whatever their value."""
LISTS = {"keyterms_prompt", "language_codes"}
"""Lists, sent as JSON text in the query (and as JSON lists in `UpdateConfiguration`)."""
MID_STREAM = (set(WHOLE) | FRACTIONS | BOOLEANS | {"prompt", "agent_context", "mode", *LISTS}) - {
    "language_detection",
    "inactivity_timeout",
    "speaker_labels_revision_interval_ms",
    "max_speakers",
    "customer_support_audio_capture",
}
"""What `UpdateConfiguration` may change (as AssemblyAI's clients send it: LiveKit's `update_options` and
Pipecat's settings updates send `language_codes`, neither `language_code` nor `language_detection`);
of these only `keyterms_prompt`, `language_codes` and `format_turns` change anything here."""


@dataclass(frozen=True)
class StreamingParams:
    """The stream's settings from the URL's query."""

    encoding: str
    sample_rate: int
    format_turns: bool
    language_detection: bool
    """The query's `language_detection` (fixed mid-stream, as AssemblyAI's)."""
    detect_language: bool
    """`language_detection=true` (or several `language_codes`): each final `Turn` says its language."""
    language: str | None
    """The one declared (or the daemon's default); None with several: the engine detects it."""
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_params(query: MultiMapping[str], core: Core) -> StreamParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    known = {"sample_rate", "encoding", "language_code", *WHOLE, *FRACTIONS, *BOOLEANS, *TEXTS, *LISTS}
    check_names(query, known | set(REFUSED_WHEN_ON) | set(REFUSED_WHEN_GIVEN), set())
    refuse_features(query, REFUSED_WHEN_ON, REFUSED_WHEN_GIVEN)
    check_unused(query)
    encoding = query.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        message = f"encoding {encoding!r} is not one this server decodes; use one of {', '.join(ENCODINGS)}"
        raise ParameterError("encoding", message)
    sample_rate = whole_parameter(query, "sample_rate", None, MIN_RATE, MAX_RATE)
    if sample_rate is None:
        raise ParameterError("sample_rate", "sample_rate is required: this server takes raw audio")
    # as AssemblyAI: language_codes binds, language_code (its older alias) counts only without it
    named = "language_codes" if "language_codes" in query else "language_code"
    codes = text_list(query, named) if named == "language_codes" else [query.get(named, "")]
    detection = boolean_parameter(query, "language_detection", False)
    language, report = declared_languages(core, codes, named, detection)
    try:
        terms = replacing_terms(core, text_list(query, "keyterms_prompt"), "keyterms_prompt")
    except ProtocolError as exc:
        raise ParameterError.of(exc, "keyterms_prompt") from None
    return StreamingParams(
        encoding=encoding,
        sample_rate=sample_rate,
        format_turns=boolean_parameter(query, "format_turns", False),
        language_detection=detection,
        detect_language=report,
        language=language,
        terms=terms,
    )


def declared_languages(core: Core, codes: list[str], named: str, detection: bool) -> tuple[str | None, bool]:
    """The language to decode in (None: the engine detects it) and whether finals report it, from the
    codes declared (in the query or `UpdateConfiguration`), or `ParameterError` naming `named`: one
    language steers the decode, `language_detection` beside it included; several, `multi`, or
    `language_detection` with none let the engine detect; none at all is the daemon's `language`."""
    try:
        engine_codes = {checked_language(core, code, named) for code in codes if code != "multi"}
    except ProtocolError as exc:
        raise ParameterError.of(exc, named) from None
    declared = {code for code in engine_codes if code is not None}
    detect = len(declared) > 1 or "multi" in codes or (detection and not declared)  # one declared steers the decode
    language = None if detect else next(iter(declared), None) or core.settings.default_language
    return language, detection or detect


def check_unused(values: Mapping[str, str]) -> None:
    """`ParameterError` for a setting the daemon takes and does not use that is not of its kind."""
    for name, (low, high) in WHOLE.items():
        whole_parameter(values, name, None, low, high)
    for name in FRACTIONS:
        fraction_parameter(values, name, 0.0, 1.0)
    for name in BOOLEANS:
        boolean_parameter(values, name, False)


def text_list(query: Mapping[str, str], name: str) -> list[str]:
    """A list of texts, JSON in the query (`["Aoife", "Calloway"]`), or `ParameterError`."""
    if name not in query:
        return []
    try:  # the value alone: wrapped in an object as text, '["a"], "list": ["b"]' was read as ["b"]
        items = json.loads(query[name])
    except (ValueError, RecursionError):  # not JSON, an integer past int()'s digit limit, nested too deep
        items = None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ParameterError(name, f'{name} must be a JSON list of texts, like ["Aoife", "Calloway"]')
    return items


def is_terminate(message: WSMessage) -> bool:
    """Whether a message is `Terminate`: what the client sent before its Close is still wanted then."""
    return is_control(message, "Terminate")


class UniversalStreamingConnection(StreamingConnection):
    """A client of Universal-Streaming: `Begin`, each turn's `Turn` messages, `ForceEndpoint`,
    `UpdateConfiguration`, and `Termination` at the end."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"

    def __init__(
        self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead, params: StreamParams
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, StreamingParams)
        self.options = params
        self.format_turns = params.format_turns
        self.opened_at = time.monotonic()
        self.starts: dict[int, float] = {}
        """Where the VAD heard each utterance whose final has not been sent yet begin."""
        self.announced: set[int] = set()
        """Those of `starts` whose `SpeechStarted` was sent: only the earliest's, as turns do not overlap."""
        self.orders: dict[int, int] = {}
        """Each utterance's `turn_order`, given when its first words are heard."""
        self.next_order = 0
        self.terminated = False
        self.reporting = params.detect_language
        """Whether finals say their language: `UpdateConfiguration`'s `language_codes` may change it
        from the next utterance on."""
        self.reports: dict[int, bool] = {}
        """`reporting` when each utterance whose final is not sent began."""

    async def opened(self) -> None:
        await self.send({"type": "Begin", "id": self.request_id, "expires_at": int(time.time()) + SESSION_HORIZON_S})

    async def closing(self) -> None:
        """`Termination`, the stream's summary, sent once."""
        if self.terminated:
            return
        self.terminated = True
        await self.send(
            {
                "type": "Termination",
                "audio_duration_seconds": round(self.seconds),
                "session_duration_seconds": round(time.monotonic() - self.opened_at),
            }
        )

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """`Error` when the connection ends with it (no session could open), `Warning` when the
        stream goes on; `message` may quote what the client sent (`echoable`)."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        text = echoable(message)
        if fatal:
            await self.send({"type": "Error", "error_code": TRY_AGAIN_LATER, "error": text})
        else:
            number = SERVER_ERROR if counted else INPUT_INVALID
            await self.send({"type": "Warning", "warning_code": number, "warning": text})

    def turn(
        self, utterance_id: int, text: str, start: float, end: float, final: bool, sureness: float
    ) -> dict[str, Any]:
        """A `Turn`: the text so far, each word spanning the utterance (the engine gives no word
        timings) as sure as the decode was of the whole; nothing is final before the turn ends."""
        start_ms, end_ms = round(start * 1000), round(max(start, end) * 1000)
        words = [
            {"start": start_ms, "end": end_ms, "text": word, "confidence": sureness, "word_is_final": final}
            for word in text.split()
        ]
        return {
            "type": "Turn",
            "turn_order": self.orders[utterance_id],
            "turn_is_formatted": final and self.format_turns,
            "end_of_turn": final,
            "transcript": text,
            "end_of_turn_confidence": 1.0 if final else 0.0,
            "words": words,
        }

    def order(self, utterance_id: int) -> None:
        if utterance_id not in self.orders:
            self.orders[utterance_id] = self.next_order
            self.next_order += 1

    async def send_event(self, event: SessionEvent) -> None:
        if isinstance(event, SpeechStarted):
            self.starts[event.utterance_id] = event.start
            self.reports[event.utterance_id] = self.reporting
            await self.announce()
        elif isinstance(event, PartialTranscript):
            # the utterance before has ended, its final not sent yet: this is not its turn, nor yet a new one
            if not event.text.strip() or any(earlier < event.utterance_id for earlier in self.starts):
                return
            self.order(event.utterance_id)
            start = self.starts.get(event.utterance_id, 0.0)
            await self.send(self.turn(event.utterance_id, event.text, start, self.seconds, False, 0.0))
        elif isinstance(event, FinalTranscript):
            await self.final(event)
        elif isinstance(event, SessionError):
            await self.error(event.code, event.message, counted=True)

    async def announce(self) -> None:
        """`SpeechStarted` of the earliest utterance whose final has not been sent, once: a later
        one heard while the turn before decodes its final is announced when that final is sent."""
        if self.starts and (first := min(self.starts)) not in self.announced:
            self.announced.add(first)
            await self.send({"type": "SpeechStarted", "timestamp": round(self.starts[first] * 1000)})

    async def final(self, event: FinalTranscript) -> None:
        """The turn's end with the final's text, and when its utterance began with `language_detection`
        (or several `language_codes`) the language detected; then the next utterance's start. An
        utterance announced by `SpeechStarted` in which no words were heard (a cough, a door) ends
        with an empty final, so that LiveKit ends the speech it began at `SpeechStarted`."""
        reporting = self.reports.pop(event.utterance_id, self.reporting)
        if event.text.strip() or event.utterance_id in self.orders or event.utterance_id in self.announced:
            self.order(event.utterance_id)
            message = self.turn(event.utterance_id, event.text, event.start, event.end, True, confidence(event))
            del self.orders[event.utterance_id]
            if reporting and event.language:
                message["language_code"] = event.language
            await self.send(message)
        self.starts.pop(event.utterance_id, None)
        self.announced.discard(event.utterance_id)
        await self.announce()

    def controls(self) -> dict[str, Control]:
        return {
            "Terminate": self.end_stream,
            "ForceEndpoint": self.end_now,
            "KeepAlive": keep_alive,
            "UpdateConfiguration": self.update,
        }

    async def update(self, message: dict[str, Any]) -> None:
        """Settings checked as the query's are, and applied all or none: `keyterms_prompt` and
        `language_codes` replace the stream's from its next utterance on (the one in progress keeping
        its own), `format_turns` applies from the next `Turn`; the others change nothing here."""
        fields = {name: value for name, value in message.items() if name != "type" and value is not None}
        unknown = sorted(set(fields) - MID_STREAM)
        if unknown:
            raise ProtocolError("invalid_configuration", f"UpdateConfiguration cannot change {', '.join(unknown)}")
        for name, value in fields.items():
            if (kind := wrong_kind(name, value)) is not None:
                raise ProtocolError("invalid_configuration", f"{name}: {name} must be {kind}")
        values = {name: query_text(value) for name, value in fields.items()}
        try:
            check_unused(values)
            terms = None
            if fields.get("keyterms_prompt") is not None:
                terms = replacing_terms(self.core, fields["keyterms_prompt"], "keyterms_prompt")
            languages = None
            if "language_codes" in fields:
                codes = fields["language_codes"]  # a JSON list, not a text reading as one (as the query carries it)
                if not isinstance(codes, list) or not all(isinstance(code, str) for code in codes):
                    raise ParameterError("language_codes", 'language_codes must be a JSON list of codes, like ["en"]')
                languages = declared_languages(self.core, codes, "language_codes", self.options.language_detection)
        except ParameterError as exc:
            raise ProtocolError("invalid_configuration", f"{exc.parameter}: {exc}") from None
        except ProtocolError as exc:  # its message names keyterms_prompt
            raise ProtocolError("invalid_configuration", exc.message) from None
        assert self.input is not None
        if terms is not None:
            self.input.session.change_decoding(terms=terms)
        if languages is not None:
            language, self.reporting = languages
            self.input.session.change_decoding(language=language)
        self.format_turns = boolean_parameter(values, "format_turns", self.format_turns)


def wrong_kind(name: str, value: object) -> str | None:
    """What `value` should be when it is not of the JSON type `UpdateConfiguration`'s `name` takes
    (a text that reads as a number is not one, nor is true 1), else None; lists are checked as used."""
    if name in WHOLE:
        right, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif name in FRACTIONS:
        right, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif name in BOOLEANS:
        right, kind = isinstance(value, bool), "true or false"
    elif name in LISTS:
        return None
    else:
        right, kind = isinstance(value, str), "a text"
    return None if right else kind


def query_text(value: object) -> str:
    """A JSON value as the query would carry it, so that one check serves both."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query is refused after the upgrade, as AssemblyAI does: an `Error` naming the
    parameter, then the Close with its code (what AssemblyAI's clients report)."""
    error = {"type": "Error", "error_code": INPUT_INVALID, "error": echoable(f"{exc.parameter}: {exc}")}
    return await refuse_in_band(core, request, ws, error, INPUT_INVALID, is_terminate)


UNIVERSAL_STREAMING = Api(
    PATH,
    "AssemblyAI's Universal-Streaming API",
    parse_params,
    UniversalStreamingConnection,
    is_terminate,
    refuse_parameters,
)
