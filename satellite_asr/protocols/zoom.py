"""Zoom's Scribe Live speech-to-text API at `/v2/aiservices/scribe/live` (docs/zoom.md): wire messages
<-> `Session` calls, so that Pipecat's `ZoomAISTTService` reaches the daemon by its URL alone.

The client offers the subprotocol `live-asr` and sends the key as `Authorization: Bearer`. Its first
message is `session.update` (language, audio format, `config`, `turn_detection`, `outputs`);
`session.updated` answers it and the session opens then. Audio comes as binary 16 kHz PCM16. The
daemon's endpointing cuts utterances: each one's start is `input_audio_buffer.speech_started`, its
final `transcription.completed` (Scribe Live sends finals only). `session.close` ends the stream:
the last final, `session.closed`, then the Close 1000. An error is `{"type": "error", "error":
{"code", "message", "fatal"}}`: a refused `session.update` is fatal and followed by the Close 1008;
a later error leaves the stream going.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SpeechStarted
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, echoable, json_object
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ErrorEventConnection,
    ParameterError,
    StreamParams,
    check_fields,
    check_names,
    is_control,
    number_within,
    refuse_in_band,
)
from satellite_asr.session import SessionOptions

PATH = "/v2/aiservices/scribe/live"
PROTOCOL = "zoom"
SUBPROTOCOL = "live-asr"
"""The subprotocol Scribe Live's clients offer, answered."""
SAMPLE_RATE = 16000
"""Scribe Live takes 16 kHz mono PCM16 alone (`audio.format` `pcm16`)."""
MAX_SILENCE_MS = 10000
"""The longest `turn_detection.silence_duration_ms` taken (checked, not applied)."""
MAX_PHRASES = 100
"""The most `config.vocabulary.phrases` taken: the daemon's own biasing limits apply too."""
FIELDS = {"type", "language", "audio", "config", "turn_detection", "outputs"}
CONFIG_FIELDS = {"model", "language_detection", "diarization", "vocabulary", "profanity_filter"}
REFUSED_WHEN_ON = {
    "config.diarization": "speaker labels (diarization)",
    "config.profanity_filter": "profanity filtering",
    "outputs.text_polishing.enabled": "text polishing",
}
"""Features the daemon cannot honour: refused when on, rather than silently left out."""
FATAL_CLOSES = {"idle_timeout": WSCloseCode.GOING_AWAY, "shutdown": WSCloseCode.GOING_AWAY}
TRANSIENT = {"server_busy"}
"""Refusals before `session.updated` that are not fatal, though the Close follows: Pipecat's service
takes a fatal error before `session.updated` for its settings refused, and stops for good."""


@dataclass(frozen=True)
class ZoomSession:
    """The stream's settings from its `session.update`."""

    locale: str | None
    """The client's locale (`en-US`), echoed in each transcript; None with language detection."""
    language: str | None
    """The engine's language for it; None: the daemon's default, or the engine's detection."""
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", SAMPLE_RATE)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(
            core.settings, partials=False, language=self.language or core.settings.default_language, terms=self.terms
        )


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in `session.update`; the URL carries none (the daemon's `api_key` aside)."""
    check_names(query, set(), set())
    return None


def refused(message: str) -> ProtocolError:
    return ProtocolError("invalid_session_update", message)


def section(update: dict[str, Any], name: str, fields: set[str]) -> dict[str, Any]:
    """The object `update[name]` ({} when absent or null), with no field but `fields`."""
    value = update.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise refused(f"{name} must be an object")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise refused(f"{name} has no field {echoable(unknown[0])!r}")
    return value


def switch(value: object, name: str) -> bool:
    """A true/false field (null: off)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise refused(f"{name} must be true or false")
    return value


def parse_session_update(message: WSMessage, core: Core) -> ZoomSession:
    """The stream's settings, or `ProtocolError` `invalid_session_update` saying what is wrong."""
    update = json_object(message.data) if message.type == WSMsgType.TEXT else "is audio"
    if isinstance(update, str):
        raise refused(f"the first message must be session.update, a JSON object; this one {update}")
    if update.get("type") != "session.update":
        raise refused("the first message must be session.update (type 'session.update')")
    unknown = sorted(set(update) - FIELDS)
    if unknown:
        raise refused(f"session.update has no field {echoable(unknown[0])!r}")
    audio = section(update, "audio", {"format"})
    if audio.get("format", "pcm16") != "pcm16":
        raise refused("audio.format must be pcm16 (16 kHz mono 16-bit PCM): this server takes no other")
    config = section(update, "config", CONFIG_FIELDS)
    model = config.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise refused("config.model must be a model's name; leave it out for the default")
    detection = section(config, "language_detection", {"mode"}) if "language_detection" in config else {}
    mode = detection.get("mode")
    if "mode" in detection and (not isinstance(mode, str) or not mode.strip()):
        raise refused("config.language_detection.mode must be a mode's name")
    turns = section(update, "turn_detection", {"silence_duration_ms"})
    silence = turns.get("silence_duration_ms")
    if silence is not None and not number_within(silence, 0, MAX_SILENCE_MS, True):
        raise refused(f"turn_detection.silence_duration_ms must be a whole number from 0 to {MAX_SILENCE_MS}")
    outputs = section(update, "outputs", {"text_polishing"})
    polishing = section(outputs, "text_polishing", {"enabled", "include_transcript"})
    switch(polishing.get("include_transcript"), "outputs.text_polishing.include_transcript")
    switches = {
        "config.diarization": config.get("diarization"),
        "config.profanity_filter": config.get("profanity_filter"),
        "outputs.text_polishing.enabled": polishing.get("enabled"),
    }
    for name, value in switches.items():
        if switch(value, name):
            raise refused(f"this server does not do {REFUSED_WHEN_ON[name]}; leave {name} out or set it to false")
    terms = vocabulary(section(config, "vocabulary", {"phrases"}))
    detecting = bool(detection)
    locale = update.get("language")
    try:
        language = checked_language(core, locale, "language")
        checked_biasing(core, "", terms, "config.vocabulary.phrases", "phrase")
    except ProtocolError as exc:
        raise refused(exc.message) from None
    if detecting:
        return ZoomSession(None, None, terms)
    return ZoomSession(locale if isinstance(locale, str) and locale else None, language, terms)


def vocabulary(value: dict[str, Any]) -> tuple[str, ...]:
    phrases = value.get("phrases") or []
    if not isinstance(phrases, list) or not all(isinstance(phrase, str) for phrase in phrases):
        raise refused("config.vocabulary.phrases must be a list of texts")
    terms = tuple(phrase.strip() for phrase in phrases if phrase.strip())
    if len(terms) > MAX_PHRASES:
        raise refused(f"{len(terms)} config.vocabulary.phrases, over the limit of {MAX_PHRASES}")
    return terms


def error_event(code: str, message: str, fatal: bool) -> dict[str, Any]:
    """Scribe Live's error event; `message` may quote the client."""
    return {"type": "error", "error": {"code": code, "message": echoable(message), "fatal": fatal}}


def ends_stream(message: WSMessage) -> bool:
    """`session.close`: what the client sent before its Close is still wanted."""
    return is_control(message, "session.close")


class ZoomConnection(ErrorEventConnection):
    """A client of Scribe Live: its `session.update`, audio and `session.close`; each utterance's
    `speech_started` and `transcription.completed`, `session.closed` at the end."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    close_reason = "client_requested"

    async def read_settings(self, message: WSMessage) -> None:
        """The `session.update` (the key was checked at the upgrade), the session and `session.updated`."""
        self.params = parse_session_update(message, self.core)
        self.open_session()
        await self.opened()

    @property
    def settings(self) -> ZoomSession:
        assert isinstance(self.params, ZoomSession)
        return self.params

    async def opened(self) -> None:
        """`session.updated`: `diarization_enabled` false, as no speaker labels come."""
        await self.send({"type": "session.updated", "session_id": self.request_id, "diarization_enabled": False})

    async def speech_started(self, event: SpeechStarted) -> None:
        await super().speech_started(event)
        await self.announce()

    async def announce(self) -> None:
        """`speech_started` of the first utterance whose final is not sent, once: a later one's waits
        for the `transcription.completed` before it (two decodes at once), or the client would end
        the turn the user is still speaking in on that earlier transcript."""
        if self.pending.announce() is not None:
            await self.send({"type": "input_audio_buffer.speech_started"})

    async def partial(self, utterance_id: int, text: str) -> None:
        """Nothing: Scribe Live sends each utterance's final alone."""

    async def final(self, event: FinalTranscript) -> None:
        """`transcription.completed`, even with no words: it ends the client's turn that
        `speech_started` opened."""
        self.pending.final(event.utterance_id)
        language = self.settings.locale or event.language or self.settings.language or ""
        start, end = event.span
        await self.send(
            {
                "type": "transcription.completed",
                "transcript": event.text.strip(),
                "language": language,
                "start_ms": round(start * 1000),
                "end_ms": round(end * 1000),
            }
        )
        await self.announce()
        await self.release_held()

    async def closing(self) -> None:
        await self.send({"type": "session.closed", "reason": self.close_reason})

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message, (self.input is None and code not in TRANSIENT) or code in FATAL_CLOSES)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Scribe's error; a refused `session.update` (no session yet) is followed by the Close, and
        later the stream goes on."""
        await super().error(code, message, fatal=fatal, counted=counted)
        if self.input is None and not fatal:
            await self.close(WSCloseCode.POLICY_VIOLATION, code)

    async def close_by_server(self, reason: str) -> None:
        """Once the finals are sent: the fatal error telling why, `session.closed`, then 1001."""
        self.finished = True
        try:
            await self.error(reason, self.server_close_sentence(reason), counted=True, fatal=True)
            self.close_reason = reason
            await self.closing()
        finally:
            await self.close(WSCloseCode.GOING_AWAY, reason)

    def controls(self) -> dict[str, Control]:
        return {"session.close": self.session_close}

    async def session_close(self, message: dict[str, Any]) -> None:
        """The end of the audio: the last final, `session.closed`, then the Close."""
        check_fields(message, "session.close", set())
        await self.end()


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A query parameter refused after the upgrade, in Scribe's fatal error, then the Close 1008:
    the client reports the error's sentence."""
    error = error_event("invalid_query_parameter", f"{exc.parameter}: {exc}", True)
    return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, ends_stream)


LIVE = Api(
    PATH,
    "Zoom's Scribe Live speech-to-text API",
    parse_query,
    ZoomConnection,
    ends_stream,
    refuse_parameters,
    subprotocol=SUBPROTOCOL,
)
