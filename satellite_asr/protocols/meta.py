"""Meta's real-time speech recognition API (Muse Voice Transcribe) at `/v1/asr/realtime`
(docs/meta.md): wire messages <-> `Session` calls, so that Pipecat's `MetaSTTService` and LiveKit's
Meta plugin reach the daemon by their URL alone.

The stream's settings come in its first message, the handshake (with the key, in its
`authorization.accessToken`); `{"sessionId"}` answers it. Audio comes as binary messages of 16-bit
PCM. Each utterance the daemon's endpointing cuts is a turn: `speechStart`, its words so far as
cumulative `transcript`s, `speechEnd`, then `speechComplete` with the final text; with
`emitAudioProgress` an `audioProgress` answers each audio message. `endStream` ends the stream: the
finals still to come, then the Close 1000. An error is `{"type": "error", "code", "message"}`; a
refused handshake is followed by the Close 1008, any later error leaves the stream going.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType
from multidict import MultiMapping

from satellite_asr.access import check_key
from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SpeechStarted, SpeechStopped
from satellite_asr.protocols import ProtocolError, close_reason, echoable, json_object
from satellite_asr.protocols.iso639 import engine_language
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ParameterError,
    SettingsMessageConnection,
    StreamParams,
    check_fields,
    check_names,
    is_control,
    refusing_in_band,
    replacing_terms,
)
from satellite_asr.session import SessionOptions

PATH = "/v1/asr/realtime"
PROTOCOL = "meta"
ENCODINGS = {"PCM_16KHZ": 16000, "PCM_24KHZ": 24000}
"""Meta's audio encodings (16-bit mono PCM) and their rates: the two its clients send."""
MODES = {"ENDPOINTING"}
"""The segmentation the daemon does: its endpointing marks each turn."""
REFUSED_MODES = {
    "PUSH_TO_TALK": "turns the client delimits (its endpointing marks them); use ENDPOINTING",
    "DIARIZATION": "speaker diarization (it tells no speakers apart); use ENDPOINTING",
}
PARTIAL_MODES = {"CUMULATIVE"}
"""Each partial restates the turn's words so far: a partial may change words, which a `DELTA`
fragment could not take back."""
FIELDS = {
    "authorization",
    "audioEncoding",
    "model",
    "mode",
    "partialMode",
    "emitAudioProgress",
    "languageBias",
    "keywords",
    "zdrOverride",
}
LANGUAGES = {
    "arabic": "ar",
    "bengali": "bn",
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hebrew": "he",
    "hindi": "hi",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "kannada": "kn",
    "korean": "ko",
    "malay": "ms",
    "mandarin chinese": "zh",
    "marathi": "mr",
    "polish": "pl",
    "portuguese": "pt",
    "spanish": "es",
    "tagalog": "tl",
    "tamil": "ta",
    "telugu": "te",
    "thai": "th",
    "turkish": "tr",
    "vietnamese": "vi",
}
"""Meta's language names (its `languageBias` entries, any case) and their codes."""
MAX_SESSION_ID_CHARS = 128


@dataclass(frozen=True)
class MetaHandshake:
    """The stream's settings from its handshake."""

    sample_rate: int
    language: str | None
    terms: tuple[str, ...]
    audio_progress: bool

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in the handshake; the URL may carry a `sessionId` (Pipecat's), which
    the acknowledgement echoes, and the daemon's `api_key`."""
    check_names(query, {"sessionId"}, set())
    session_id = query.get("sessionId")
    if session_id is not None and not 0 < len(session_id) <= MAX_SESSION_ID_CHARS:
        raise ParameterError("sessionId", f"sessionId must be 1 to {MAX_SESSION_ID_CHARS} characters")
    return None


def handshake_object(message: WSMessage) -> dict[str, Any]:
    """The first message as a JSON object, or `invalid_handshake`."""
    handshake = json_object(message.data) if message.type == WSMsgType.TEXT else "is audio"
    if isinstance(handshake, str):
        raise ProtocolError(
            "invalid_handshake", f"the first message must be the handshake, a JSON object; this one {handshake}"
        )
    return handshake


def in_band_key(message: WSMessage) -> str | None:
    """The key a handshake carries in `authorization.accessToken` (`Bearer KEY`, or the key alone)."""
    handshake = json_object(message.data) if message.type == WSMsgType.TEXT else None
    authorization = handshake.get("authorization") if isinstance(handshake, dict) else None
    token = authorization.get("accessToken") if isinstance(authorization, dict) else None
    if not isinstance(token, str):
        return None
    scheme, _, rest = token.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else token.strip()


def parse_handshake(message: WSMessage, core: Core) -> MetaHandshake:
    """The stream's settings, or `ProtocolError` `invalid_handshake` saying what is wrong."""
    handshake = handshake_object(message)
    unknown = sorted(set(handshake) - FIELDS)
    if unknown:
        raise ProtocolError("invalid_handshake", f"the handshake has no field {echoable(unknown[0])!r}")
    encoding = handshake.get("audioEncoding")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        named = f"audioEncoding {echoable(str(encoding))!r}" if encoding is not None else "audioEncoding is missing"
        raise ProtocolError("invalid_handshake", f"{named}: this server takes one of {', '.join(ENCODINGS)}")
    model = handshake.get("model", "muse-voice-transcribe-1.0")
    if not isinstance(model, str) or not model.strip():
        raise ProtocolError("invalid_handshake", "model must be a model's name, e.g. muse-voice-transcribe-1.0")
    mode = handshake.get("mode", "ENDPOINTING")
    if isinstance(mode, str) and mode in REFUSED_MODES:
        raise ProtocolError("invalid_handshake", f"mode {mode}: this server does not do {REFUSED_MODES[mode]}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ProtocolError("invalid_handshake", f"mode must be ENDPOINTING, got {echoable(str(mode))!r}")
    partial_mode = handshake.get("partialMode", "CUMULATIVE")
    if not isinstance(partial_mode, str) or partial_mode not in PARTIAL_MODES:
        raise ProtocolError(
            "invalid_handshake",
            f"partialMode {echoable(str(partial_mode))!r}: this server sends CUMULATIVE partials only "
            "(a partial may change words a fragment could not take back)",
        )
    for name in ("emitAudioProgress", "zdrOverride"):
        if handshake.get(name) is not None and not isinstance(handshake[name], bool):
            raise ProtocolError("invalid_handshake", f"{name} must be true or false")
    try:
        language = bias_language(core, handshake.get("languageBias"))
        keywords = handshake.get("keywords")
        terms = () if keywords is None else replacing_terms(core, keywords, "keywords")
    except ProtocolError as exc:
        raise ProtocolError("invalid_handshake", exc.message) from None
    return MetaHandshake(
        sample_rate=ENCODINGS[encoding],
        language=language,
        terms=terms,
        audio_progress=bool(handshake.get("emitAudioProgress")),
    )


def bias_language(core: Core, bias: object) -> str | None:
    """The stream's language from `languageBias` (Meta's language names, or codes): one language is
    the decode's, several leave it to the engine to detect, none is the daemon's default. Each must
    be one the engine has."""
    if bias is None:
        return core.settings.default_language
    if not isinstance(bias, list) or not all(isinstance(entry, str) for entry in bias):
        raise ProtocolError("invalid_handshake", "languageBias must be a list of language names, e.g. English")
    languages = set()
    for entry in bias:
        code = LANGUAGES.get(entry.strip().casefold(), entry.strip())
        language = engine_language(core, code, f"languageBias {echoable(entry)!r}")
        if language is None:
            raise ProtocolError("invalid_handshake", "languageBias entries must be language names, e.g. English")
        languages.add(language)
    if not languages:
        return core.settings.default_language
    return next(iter(languages)) if len(languages) == 1 else None


def error_event(code: str, message: str) -> dict[str, Any]:
    """Meta's error event: `message`, the sentence both clients report, and the daemon's `code`."""
    return {"type": "error", "code": code, "message": echoable(message)}


def ends_stream(message: WSMessage) -> bool:
    """`endStream`: what the client sent before its Close is still wanted."""
    return is_control(message, "endStream")


class MetaConnection(SettingsMessageConnection):
    """A client of the real-time API: its handshake, audio and `endStream`; each turn's
    `speechStart`, partials, `speechEnd` and `speechComplete`, and `audioProgress` if asked for."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    idle_means_missing_audio = True  # LiveKit's plugin does not reconnect once it sent audio (docs/meta.md)
    received = 0
    """The samples of audio received, at the handshake's rate."""

    def parse_settings(self, message: WSMessage) -> MetaHandshake:
        """The key (the connection's, or the handshake's) first, so that a client without it learns
        nothing of the server from its handshake's refusal; then the handshake. Whatever the first
        message (audio, not JSON), a client without the key gets the key's refusal."""
        refusal = check_key(self.request, in_band_key(message), "authorization.accessToken")
        if refusal is not None:
            raise ProtocolError(refusal[1], refusal[2])
        return parse_handshake(message, self.core)

    @property
    def handshake(self) -> MetaHandshake:
        assert isinstance(self.params, MetaHandshake)
        return self.params

    async def opened(self) -> None:
        """The acknowledgement: the session's id (the URL's `sessionId`, else the daemon's own)."""
        self.speech_ended: set[int] = set()
        """The turns whose `speechEnd` was sent before their final."""
        await self.send({"sessionId": self.request.query.get("sessionId") or self.request_id})

    async def speech_started(self, event: SpeechStarted) -> None:
        await super().speech_started(event)
        await self.send({"type": "speechStart", "turnId": event.utterance_id})

    async def speech_stopped(self, event: SpeechStopped) -> None:
        """`speechEnd` now, unless a turn before it still awaits its final: then with its own final,
        after the partials held back for that one."""
        if any(earlier < event.utterance_id for earlier in self.pending.starts):
            return
        self.speech_ended.add(event.utterance_id)
        await self.send({"type": "speechEnd", "turnId": event.utterance_id})

    async def partial(self, utterance_id: int, text: str) -> None:
        await self.send({"type": "transcript", "turnId": utterance_id, "transcript": text.strip(), "final": False})

    async def final(self, event: FinalTranscript) -> None:
        """`speechEnd` (if not sent), then `speechComplete` with the turn's text, empty for a turn with
        no words (a cough): a turn begun is always completed."""
        self.pending.final(event.utterance_id)
        if event.utterance_id not in self.speech_ended:
            await self.send({"type": "speechEnd", "turnId": event.utterance_id})
        self.speech_ended.discard(event.utterance_id)
        await self.send({"type": "speechComplete", "turnId": event.utterance_id, "transcript": event.text.strip()})
        await self.release_held()

    async def closing(self) -> None:
        """Nothing: after `endStream` the last turn's `speechComplete`, then the Close."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_event(code, message)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """As the other APIs', but no session could be opened (`server_busy`, at `max_sessions`): the
        Close 1013 alone, its reason the sentence. Both clients take an error event in answer to the
        handshake for a refusal to give up on (LiveKit's handshake error is not retried, Pipecat's
        "rejected the session" leaves its service unusable); a Close 1013 they retry."""
        if not (fatal and self.input is None):
            await super().error(code, message, fatal=fatal, counted=counted)
            return
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        await self.close(WSCloseCode.TRY_AGAIN_LATER, close_reason(message))

    async def on_binary(self, data: bytes) -> None:
        """Audio; with `emitAudioProgress`, how much of the stream has come, in ms of the client's audio
        (counted as it comes, not as the resampler lets it out)."""
        await super().on_binary(data)
        self.received += len(data) // 2  # whole 16-bit samples: `on_binary` refused any other
        if self.handshake.audio_progress:
            milliseconds = round(self.received * 1000 / self.handshake.sample_rate)
            await self.send({"type": "audioProgress", "audioProcessedMs": milliseconds})

    def controls(self) -> dict[str, Control]:
        return {"endStream": self.end_stream_message}

    async def end_stream_message(self, message: dict[str, Any]) -> None:
        check_fields(message, "endStream", set())
        await self.end()


REALTIME = Api(
    PATH,
    "Meta's real-time speech recognition API",
    parse_query,
    MetaConnection,
    ends_stream,
    refusing_in_band(error_event, ends_stream),
)
