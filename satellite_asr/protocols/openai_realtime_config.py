"""OpenAI Realtime transcription settings: `session.update` (GA) and `transcription_session.update`
(beta) checked into a `RealtimeConfig`, and the effective session objects the server reports.

An update changes only the fields it carries, as OpenAI's does. Each value is checked as the
daemon setting it becomes (`config.coerce`), so the limits and messages are the daemon's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.biasing.context import client_terms
from satellite_asr.config import ConfigError, Settings, coerce
from satellite_asr.core import Core
from satellite_asr.engines.base import EngineInfo
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, echoable
from satellite_asr.session import SessionOptions

PCM_RATE = 24000
"""OpenAI's PCM rate, the default; any rate from 8000 to 48000 is accepted."""
G711_RATE = 8000
GA_FORMATS = {"audio/pcm": "s16le", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
"""GA `audio.input.format.type` -> the decoder's encoding."""
BETA_FORMATS = {"pcm16": ("s16le", PCM_RATE), "g711_ulaw": ("pcmu", G711_RATE), "g711_alaw": ("pcma", G711_RATE)}
"""Beta `input_audio_format` -> (encoding, rate)."""
TOGETHER_FORMAT = "pcm_s16le_16000"
QUERY_FORMATS = {TOGETHER_FORMAT: ("s16le", 16000), **BETA_FORMATS}
"""The `input_audio_format` query parameter (Together AI's dialect, docs/together.md): Together's one
spelling (its default), or a beta name."""
QUERY_TURN_DETECTION = ("server_vad", "semantic_vad", "none")
QUERY_VAD = {
    "threshold": ("threshold", "vad_threshold"),
    "min_silence_duration_ms": ("silence_duration_ms", "silence_ms"),
    "speech_pad_ms": ("prefix_padding_ms", "speech_pad_ms"),
}
"""Together's VAD query parameters -> (the `server_vad` field each is, the daemon setting it is checked as)."""
QUERY_CHECKED = {"min_speech_duration_ms": "min_speech_ms", "max_speech_duration_s": "max_utterance_s"}
"""Together's VAD query parameters checked as the daemon setting named, not applied (docs/together.md)."""
QUERY_PARAMETERS = {"input_audio_format", "turn_detection", *QUERY_VAD, *QUERY_CHECKED}

EAGERNESS = {"low": (400, 1600), "medium": (200, 800), "high": (120, 500)}
"""`semantic_vad` eagerness -> (min_silence_ms, silence_ms) of adaptive turn detection: the wait after a
command judged complete (`vad.turn`), and after anything else. `auto` keeps the daemon's own settings."""
MANUAL_MIN_SPEECH_MS = 32
"""With turn detection off the client commits, so one window of speech starts the item: a short
word committed at once is not lost for want of `min_speech_ms`."""

TRANSCRIPTION_FIELDS = {"model", "language", "languages", "prompt", "keywords", "delay"}
TURN_DETECTION_FIELDS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "eagerness",
    "create_response",
    "interrupt_response",
    "idle_timeout_ms",
}
SERVER_VAD_SETTINGS = {
    "threshold": "vad_threshold",
    "prefix_padding_ms": "speech_pad_ms",
    "silence_duration_ms": "silence_ms",
}
"""`server_vad` fields and the daemon setting each becomes (and is checked as)."""
GA_SESSION_FIELDS = {"type", "audio", "include", "id", "object", "expires_at"}
GA_INPUT_FIELDS = {"format", "transcription", "turn_detection", "noise_reduction"}
BETA_SESSION_FIELDS = {
    "input_audio_format",
    "input_audio_transcription",
    "turn_detection",
    "input_audio_noise_reduction",
    "include",
    "modalities",
    "client_secret",
    "id",
    "object",
}
"""Every field of OpenAI's schemas is accepted; those the daemon has no use for (noise reduction,
`include`, response creation, `delay`, ...) are ignored. Any other field is refused."""


@dataclass(frozen=True)
class TurnDetection:
    """`server_vad` (fixed endpointing) or `semantic_vad` (adaptive); None fields: the daemon's settings."""

    type: str
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    eagerness: str = "auto"

    def vad_overrides(self, settings: Settings) -> dict[str, Any]:
        """`EndpointerConfig` fields by name."""
        if self.type == "semantic_vad":
            overrides: dict[str, Any] = {"turn_detection": "adaptive"}
            if self.eagerness in EAGERNESS:
                overrides["min_silence_ms"], overrides["silence_ms"] = EAGERNESS[self.eagerness]
            return overrides
        overrides = {"turn_detection": "fixed"}
        if self.threshold is not None:
            overrides["threshold"] = self.threshold
        if self.prefix_padding_ms is not None:
            overrides["speech_pad_ms"] = self.prefix_padding_ms
        if self.silence_duration_ms is not None:
            overrides["silence_ms"] = self.silence_duration_ms
            overrides["min_silence_ms"] = min(settings.min_silence_ms, self.silence_duration_ms)
        return overrides


@dataclass(frozen=True)
class RealtimeConfig:
    """One connection's transcription settings, as the client set them."""

    encoding: str
    sample_rate: int
    language: str | None
    prompt: str
    keywords: tuple[str, ...]
    turn_detection: TurnDetection | None
    """None: turn detection off, the client commits."""
    together: bool = False
    """Together AI's dialect (its query parameters were given): each delta carries the item's whole
    text so far, as `delta` and `transcript`, and the first announcement is `session.created`."""

    @classmethod
    def defaults(cls, settings: Settings) -> RealtimeConfig:
        """24 kHz PCM, the daemon's language, and its turn detection in OpenAI's terms."""
        turn = {"adaptive": TurnDetection("semantic_vad"), "fixed": TurnDetection("server_vad"), "manual": None}
        return cls("s16le", PCM_RATE, settings.default_language, "", (), turn[settings.turn_detection])

    def session_options(self, settings: Settings) -> SessionOptions:
        if self.turn_detection is None:
            vad: dict[str, Any] = {"turn_detection": "manual", "min_speech_ms": MANUAL_MIN_SPEECH_MS}
        else:
            vad = self.turn_detection.vad_overrides(settings)
        return SessionOptions.from_settings(
            settings, vad=vad, language=self.language, context=self.prompt, terms=self.keywords
        )

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(self.encoding, self.sample_rate)


def apply_update(config: RealtimeConfig, message: dict[str, Any], beta: bool, core: Core) -> RealtimeConfig:
    """`config` changed by a `session.update` (or, `beta`, a `transcription_session.update`); the
    prompt and keywords together may hold at most `max_context_chars`."""
    session = message.get("session")
    if not isinstance(session, dict):
        raise _invalid("missing_required_parameter", "session must be an object", "session")
    if beta:
        _refuse_unknown(session, BETA_SESSION_FIELDS, "session")
        fields = [
            ("input_audio_format", _beta_format),
            ("input_audio_transcription", _transcription),
            ("turn_detection", _turn_detection),
        ]
        values, prefix = session, "session."
    else:
        kind = session.get("type")
        if kind is None:
            raise _invalid("missing_required_parameter", "session.type is required: 'transcription'", "session.type")
        if kind != "transcription":
            message_text = f"session.type must be 'transcription' (this server only transcribes), got {kind!r}"
            raise _invalid("invalid_value", message_text, "session.type")
        _refuse_unknown(session, GA_SESSION_FIELDS, "session")
        audio = _object(session.get("audio"), "session.audio")
        _refuse_unknown(audio, {"input"}, "session.audio")
        values = _object(audio.get("input"), "session.audio.input")
        _refuse_unknown(values, GA_INPUT_FIELDS, "session.audio.input")
        fields = [("format", _ga_format), ("transcription", _transcription), ("turn_detection", _turn_detection)]
        prefix = "session.audio.input."
    for key, parse in fields:
        if key in values:
            config = parse(config, values[key], prefix + key, core)
    transcription = "input_audio_transcription" if beta else "transcription"
    param = f"{prefix}{transcription}"
    checked_biasing(core, config.prompt, config.keywords, f"{param}.prompt", f"{param}.prompt and .keywords")
    return config


def from_query(config: RealtimeConfig, query: Mapping[str, str]) -> RealtimeConfig:
    """`config` set by Together AI's query parameters (`QUERY_PARAMETERS`), as a `session.update`
    would set it; any of them makes the connection speak Together's dialect. A value the daemon
    cannot take is a `ProtocolError` naming the parameter."""
    if not QUERY_PARAMETERS & set(query):
        return config
    changes: dict[str, Any] = {"together": True}
    value = query.get("input_audio_format", TOGETHER_FORMAT)  # Together's default is its one format
    if value not in QUERY_FORMATS:
        message = f"input_audio_format must be one of {', '.join(QUERY_FORMATS)}, got {value!r:.40}"
        raise _invalid("invalid_value", message, "input_audio_format")
    changes["encoding"], changes["sample_rate"] = QUERY_FORMATS[value]
    vad: dict[str, Any] = {}
    for name, setting in [*((name, setting) for name, (_, setting) in QUERY_VAD.items()), *QUERY_CHECKED.items()]:
        if name in query:
            try:
                vad[name] = coerce(setting, query[name])
            except ConfigError as exc:
                reason = str(exc).split(": ", 1)[1]
                raise _invalid("invalid_value", f"{name} {reason}", name) from None
    current = "none" if config.turn_detection is None else config.turn_detection.type
    kind = query.get("turn_detection", "server_vad" if vad else current)
    if kind not in QUERY_TURN_DETECTION:
        message = f"turn_detection must be one of {', '.join(QUERY_TURN_DETECTION)}, got {kind!r:.40}"
        raise _invalid("invalid_value", message, "turn_detection")
    if kind == "none":
        changes["turn_detection"] = None
    elif kind == "semantic_vad":
        changes["turn_detection"] = TurnDetection(kind)
    else:
        fields = {field: vad[name] for name, (field, _) in QUERY_VAD.items() if name in vad}
        changes["turn_detection"] = TurnDetection(kind, **fields)
    return dataclasses.replace(config, **changes)


def _ga_format(config: RealtimeConfig, value: Any, param: str, core: Core) -> RealtimeConfig:
    value = _object(value, param)
    _refuse_unknown(value, {"type", "rate"}, param)
    kind = value.get("type", "audio/pcm")
    if not isinstance(kind, str):  # a list or object is not even looked up: it cannot be hashed
        raise _invalid("invalid_type", f"{param}.type must be text, got {kind!r:.40}", f"{param}.type")
    if kind not in GA_FORMATS:
        message = f"{param}.type must be one of {', '.join(GA_FORMATS)}, got {kind!r}"
        raise _invalid("invalid_value", message, f"{param}.type")
    rate = value.get("rate", PCM_RATE if kind == "audio/pcm" else G711_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        message = f"{param}.rate must be a whole number from {MIN_RATE} to {MAX_RATE}, got {rate!r}"
        raise _invalid("invalid_value", message, f"{param}.rate")
    return dataclasses.replace(config, encoding=GA_FORMATS[kind], sample_rate=rate)


def _beta_format(config: RealtimeConfig, value: Any, param: str, core: Core) -> RealtimeConfig:
    if not isinstance(value, str):
        raise _invalid("invalid_type", f"{param} must be text, got {value!r:.40}", param)
    if value not in BETA_FORMATS:
        raise _invalid("invalid_value", f"{param} must be one of {', '.join(BETA_FORMATS)}, got {value!r}", param)
    encoding, rate = BETA_FORMATS[value]
    return dataclasses.replace(config, encoding=encoding, sample_rate=rate)


def _transcription(config: RealtimeConfig, value: Any, param: str, core: Core) -> RealtimeConfig:
    """`model` is accepted whatever it names (the daemon's engine answers); `language` is checked."""
    if value is None:  # transcription cannot be turned off: it is what this server does
        return config
    value = _object(value, param)
    _refuse_unknown(value, TRANSCRIPTION_FIELDS, param)
    for key in ("model", "prompt", "delay"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise _invalid("invalid_type", f"{param}.{key} must be text, got {value[key]!r}", f"{param}.{key}")
    changes: dict[str, Any] = {}
    if "prompt" in value:
        changes["prompt"] = value["prompt"] or ""
    if "keywords" in value:
        changes["keywords"] = tuple(client_terms(_texts(value["keywords"], f"{param}.keywords")))
    if "languages" in value:
        languages = [
            checked_language(core, code, f"{param}.languages")
            for code in _texts(value["languages"], f"{param}.languages")
        ]
        changes["language"] = languages[0] if len(languages) == 1 else None
    if "language" in value:  # null or empty: detect, as OpenAI does without a language
        changes["language"] = checked_language(core, value["language"], f"{param}.language")
    return dataclasses.replace(config, **changes)


def _texts(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid("invalid_type", f"{param} must be a list of text, got {value!r}", param)
    return value


def _turn_detection(config: RealtimeConfig, value: Any, param: str, core: Core) -> RealtimeConfig:
    if value is None:
        return dataclasses.replace(config, turn_detection=None)
    value = _object(value, param)
    _refuse_unknown(value, TURN_DETECTION_FIELDS, param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        message = f"{param}.type must be server_vad or semantic_vad (or turn_detection null), got {kind!r}"
        raise _invalid("invalid_value", message, f"{param}.type")
    if kind == "semantic_vad":
        eagerness = value.get("eagerness")
        eagerness = "auto" if eagerness is None else eagerness
        if eagerness not in (*EAGERNESS, "auto"):
            message = f"{param}.eagerness must be low, medium, high or auto, got {eagerness!r}"
            raise _invalid("invalid_value", message, f"{param}.eagerness")
        return dataclasses.replace(config, turn_detection=TurnDetection(kind, eagerness=eagerness))
    values: dict[str, Any] = {}
    for key, setting in SERVER_VAD_SETTINGS.items():
        raw = value.get(key)
        if raw is None:
            continue
        whole = key != "threshold"
        if isinstance(raw, bool) or not isinstance(raw, int if whole else (int, float)):
            kind_text = "a whole number of milliseconds" if whole else "a number"
            raise _invalid("invalid_type", f"{param}.{key} must be {kind_text}, got {raw!r}", f"{param}.{key}")
        try:
            values[key] = coerce(setting, raw)
        except ConfigError as exc:
            reason = str(exc).split(": ", 1)[1]
            raise _invalid("invalid_value", f"{param}.{key} {reason}", f"{param}.{key}") from None
    return dataclasses.replace(config, turn_detection=TurnDetection(kind, **values))


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("invalid_type", f"{param} must be an object, got {value!r}", param)
    return value


def _refuse_unknown(value: dict[str, Any], known: set[str], param: str) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise _invalid("unknown_parameter", f"unknown parameter {param}.{unknown[0]}", f"{param}.{unknown[0]}")


def _invalid(code: str, message: str, param: str) -> ProtocolError:
    return ProtocolError(code, message, param=param)


def _turn_object(config: RealtimeConfig, options: SessionOptions) -> dict[str, Any] | None:
    turn, e = config.turn_detection, options.endpointing
    if turn is None:
        return None
    if turn.type == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": turn.eagerness}
    return {
        "type": "server_vad",
        "threshold": e.threshold,
        "prefix_padding_ms": e.speech_pad_ms,
        "silence_duration_ms": e.silence_ms,
    }


def _transcription_object(config: RealtimeConfig, options: SessionOptions, engine: EngineInfo) -> dict[str, Any]:
    """`model` is the model that really answers, whatever name the client gave; `prompt` and
    `keywords` are the client's (`echoable`)."""
    return {
        "model": engine.model,
        "language": options.language,
        "prompt": echoable(config.prompt),
        "keywords": [echoable(keyword) for keyword in config.keywords],
    }


def ga_session(session_id: str, config: RealtimeConfig, options: SessionOptions, engine: EngineInfo) -> dict[str, Any]:
    """The effective session as GA `session.created` / `session.updated` carry it."""
    audio_format: dict[str, Any] = {"type": next(k for k, v in GA_FORMATS.items() if v == config.encoding)}
    if config.encoding == "s16le" or config.sample_rate != G711_RATE:
        audio_format["rate"] = config.sample_rate
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "audio": {
            "input": {
                "format": audio_format,
                "noise_reduction": None,
                "transcription": _transcription_object(config, options, engine),
                "turn_detection": _turn_object(config, options),
            }
        },
        "include": None,
    }


def beta_session(
    session_id: str, config: RealtimeConfig, options: SessionOptions, engine: EngineInfo
) -> dict[str, Any]:
    """The effective session as beta `transcription_session.created` / `.updated` carry it (a format
    the beta cannot name, such as 16 kHz PCM set through GA, is given as the GA format object).
    `keywords` is not a beta field: it is said only to a client that set some."""
    names = {value: name for name, value in BETA_FORMATS.items()}
    ga_format = ga_session(session_id, config, options, engine)["audio"]["input"]["format"]
    transcription = _transcription_object(config, options, engine)
    if not config.keywords:
        del transcription["keywords"]
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "input_audio_format": names.get((config.encoding, config.sample_rate), ga_format),
        "input_audio_transcription": transcription,
        "turn_detection": _turn_object(config, options),
        "input_audio_noise_reduction": None,
        "modalities": ["text"],
        "include": None,
    }
