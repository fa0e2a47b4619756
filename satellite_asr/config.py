"""Daemon settings: one flat table of keys, read from defaults < YAML file < environment < CLI.

Every key is declared once in `Settings` with its default, its allowed values and its help text;
the `serve` flags (`--silence-ms`), the environment variables (`SATELLITE_ASR_SILENCE_MS`) and the
YAML keys (`silence_ms`) are all derived from that one declaration, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from satellite_asr.homeassistant.client import websocket_url

ENV_PREFIX = "SATELLITE_ASR_"


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the key and what is allowed."""


def _opt(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
) -> Any:
    """A setting's declaration; a `secret` one is left out of the settings' repr (and so of any log)."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=meta, repr=not secret)


ENGINES = ("auto", "whisper", "qwen3-vllm", "qwen3-remote")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TURN_DETECTION = ("adaptive", "fixed", "manual")


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told. Times are milliseconds (`_ms`) or seconds (`_s`)."""

    # Network
    host: str = _opt("0.0.0.0", "Address the HTTP/WebSocket server binds to.")
    http_port: int = _opt(
        10301,
        "Port of the HTTP server: the browser page, WebSocket /v1/stream and /v1/realtime, the OpenAI REST API, "
        "/health, /metrics.",
        minimum=0,
        maximum=65535,
    )
    wyoming_uri: str = _opt(
        "tcp://0.0.0.0:10300", "Wyoming server address: tcp://HOST:PORT or unix://PATH; 'none' disables it."
    )
    zeroconf: bool = _opt(True, "Advertise the Wyoming and WebSocket services with zeroconf (mDNS).")
    zeroconf_interface: tuple[str, ...] = _opt(
        (), "Interface address to advertise on (repeatable); empty: all interfaces."
    )
    zeroconf_name: str = _opt(
        "", "Zeroconf instance name (cut to 60 bytes; no dot at either end); empty: derived from the host name."
    )
    tls_cert: str = _opt("", "PEM certificate for HTTPS/WSS (browsers need a secure context for the microphone).")
    tls_key: str = _opt("", "PEM private key matching tls_cert.")

    # Engine
    engine: str = _opt(
        "auto",
        "Speech engine; auto picks qwen3-remote when remote_urls is set, qwen3-vllm on a CUDA GPU with vLLM "
        "installed, else whisper.",
        choices=ENGINES,
    )
    model: str = _opt("", "Model name or local path; empty: the engine's default.")
    language: str = _opt(
        "",
        "Default language code (e.g. en), one the model has (checked once it has loaded); empty: detect (or the "
        "model's only language).",
    )
    context: str = _opt("", "Default biasing context (names, terms) added to every session's own context.")
    whisper_compute_type: str = _opt(
        "int8",
        "CTranslate2 compute type for the whisper engine.",
        choices=("int8", "int8_float32", "float32", "float16", "int8_float16"),
    )
    whisper_device: str = _opt("cpu", "Device for the whisper engine.", choices=("cpu", "cuda", "auto"))
    whisper_threads: int = _opt(
        0,
        "CPU threads per whisper decode; 0: the cores shared out among decode_concurrency decodes.",
        minimum=0,
        maximum=256,
    )
    whisper_beam_size: int = _opt(
        1, "Beam size of whisper final decodes (partials always use greedy).", minimum=1, maximum=10
    )
    whisper_short_context: bool = _opt(
        True,
        "Encode a window of the utterance's length (at least 6 s) instead of Whisper's fixed 30 s: about 7x less CPU "
        "for a command; a decode that repeats itself is redone on a longer window, then on the full one.",
    )
    decode_concurrency: int = _opt(1, "Decodes the CPU engine runs at once.", minimum=1, maximum=64)

    # Qwen3 / vLLM
    vllm_dtype: str = _opt(
        "auto", "Weight dtype of the qwen3-vllm engine.", choices=("auto", "bfloat16", "float16", "float32")
    )
    vllm_gpu_memory_utilization: float = _opt(
        0.9, "Share of GPU memory vLLM may take (weights + KV cache).", minimum=0.05, maximum=0.99
    )
    vllm_max_model_len: int = _opt(
        4096,
        "Longest prompt + transcript in tokens: audio (30 s: 390), 2 x qwen_max_new_tokens, then context (what is "
        "left, at most 1024); too short for the first two stops start-up.",
        minimum=256,
        maximum=65536,
    )
    vllm_max_num_seqs: int = _opt(
        64, "Decodes vLLM batches at once (the daemon keeps this many in flight).", minimum=1, maximum=4096
    )
    vllm_enforce_eager: bool = _opt(False, "Skip CUDA graph capture: faster start, slower decoding.")
    vllm_kv_cache_bytes: int = _opt(
        0,
        "KV cache size in bytes; 0: what vllm_gpu_memory_utilization leaves after the weights.",
        minimum=0,
        maximum=2**40,
    )
    qwen_max_new_tokens: int = _opt(512, "Most tokens one Qwen3-ASR decode may write.", minimum=1, maximum=8192)
    qwen_rollback_tokens: int = _opt(
        5, "Tokens at the end of the previous partial that the next partial may rewrite.", minimum=0, maximum=100
    )
    qwen_fresh_partials: int = _opt(
        2, "Partials at the start of an utterance decoded from scratch, before rollback starts.", minimum=0, maximum=100
    )
    remote_urls: tuple[str, ...] = _opt(
        (),
        "Base URLs of vLLM OpenAI servers for the qwen3-remote engine, which engine auto then picks (repeatable or "
        "comma-separated); "
        "without a user or password (see remote_api_key).",
    )
    remote_api_key: str = _opt("", "API key the vLLM servers expect (vllm serve --api-key); empty: none.", secret=True)
    remote_timeout_s: float = _opt(
        30.0,
        "Longest wait for one remote server's answer; a decode that fails over waits this long per server tried.",
        minimum=1.0,
        maximum=600.0,
    )
    remote_health_interval_s: float = _opt(
        5.0,
        "How often every remote server is probed (/v1/models); one that fails is skipped until it answers again.",
        minimum=0.1,
        maximum=3600.0,
    )
    remote_max_concurrency: int = _opt(
        64,
        "Decodes kept in flight across all remote servers (about the sum of their max-num-seqs).",
        minimum=1,
        maximum=4096,
    )

    # Endpointing (per-session overridable where the protocol allows)
    vad_threshold: float = _opt(
        0.5, "Silero speech probability at or above which a window is speech.", minimum=0.05, maximum=0.95
    )
    min_speech_ms: int = _opt(300, "Speech needed before an utterance starts.", minimum=32, maximum=5000)
    turn_detection: str = _opt(
        "adaptive",
        "adaptive: a pause after what reads (and in English sounds) like a complete command ends it after "
        "min_silence_ms, any other pause waits silence_ms; fixed: every utterance ends after silence_ms; manual: "
        "silence ends nothing, the client ends utterances (flush, end of stream, commit) or max_utterance_s does.",
        choices=TURN_DETECTION,
    )
    min_silence_ms: int = _opt(
        200, "Silence that ends a complete command (turn_detection adaptive).", minimum=64, maximum=10000
    )
    silence_ms: int = _opt(
        800, "Silence that ends an utterance (adaptive: the longest wait).", minimum=100, maximum=10000
    )
    speech_pad_ms: int = _opt(
        300, "Audio kept before the detected speech start so the first syllable is not cut.", minimum=0, maximum=2000
    )
    partial_interval_ms: int = _opt(500, "Speech between two partial transcripts.", minimum=100, maximum=10000)
    max_utterance_s: float = _opt(
        30.0, "Longest utterance; a final is forced at this length.", minimum=1.0, maximum=300.0
    )
    partials: bool = _opt(True, "Send partial transcripts by default.")

    # Sessions
    max_sessions: int = _opt(
        32, "Most sessions open at once; more are refused with server_busy.", minimum=1, maximum=10000
    )
    wyoming_reserved_sessions: int = _opt(
        4,
        "Session slots only Wyoming (Home Assistant) may take: other protocols get server_busy once max_sessions "
        "minus this many sessions are open. Must be less than max_sessions.",
        minimum=0,
        maximum=10000,
    )
    idle_timeout_s: float = _opt(
        60.0,
        "A session in which no speech is heard for this long (from its start or its last speech) is finalized "
        "and closed; audio without speech does not keep it open. Time the client's audio waits on a busy daemon "
        "does not count. A WebSocket message still arriving then is waited for, up to as long again. Inworld, Meta, "
        "Sarvam's streaming API and Gradium, whose clients do not reconnect, count the audio missing instead: a "
        "stream at real-time pace, silent or not, is never idle.",
        minimum=1.0,
        maximum=86400.0,
    )
    max_context_chars: int = _opt(
        4000, "Longest biasing context a client may send with a session.", minimum=0, maximum=1000000
    )

    # Access (docs/security.md)
    api_key: str = _opt(
        "",
        "Key clients must send on every HTTP route but /, /static/ and /health, WebSocket upgrades included "
        "(Authorization: Bearer, X-API-Key, a WebSocket subprotocol or ?api_key=); empty: no key. "
        "Wyoming is never authenticated.",
        secret=True,
    )
    api_key_file: str = _opt("", "File whose first line is the api_key (keeps the secret out of configs and ps).")
    allowed_origins: tuple[str, ...] = _opt(
        (),
        "Web page origins (scheme://host[:port], as the browser's address bar shows them) allowed besides the "
        "daemon's own page to open WebSockets and call the HTTP API; '*': any.",
    )
    allowed_hosts: tuple[str, ...] = _opt(
        (),
        "Host names (without port) clients may reach the daemon by, besides localhost, its host name and IP "
        "addresses (DNS rebinding defence; checked only without an api_key); '*': any.",
    )

    # Connection limits
    max_http_connections: int = _opt(
        256,
        "Most TCP connections open at once on the HTTP port, whatever they are doing (idle, sending a request, a "
        "WebSocket, an upload); more are answered 503 and closed at once, so silent connections cannot use up the "
        "process's file descriptors and leave Wyoming unable to accept.",
        minimum=1,
        maximum=100000,
    )
    max_http_connections_per_address: int = _opt(
        80,
        "Most of those one client address may hold, whatever route each is on: a client that holds many streams "
        "(on one WebSocket route or several) needs room here for them and its other requests (behind a reverse proxy "
        "every client has the proxy's address: raise it there).",
        minimum=1,
        maximum=100000,
    )
    max_websocket_connections: int = _opt(
        64,
        "Most WebSocket connections open at once on each WebSocket route (/v1/stream, /v1/realtime and each "
        "hosted API's stream); more are refused with HTTP 503.",
        minimum=1,
        maximum=100000,
    )
    max_wyoming_connections: int = _opt(
        64, "Most Wyoming connections open at once; more get a server_busy error.", minimum=1, maximum=100000
    )
    max_connections_per_address: int = _opt(
        32,
        "Most connections one client address may hold open, per protocol (uploads: max_uploads_per_address).",
        minimum=1,
        maximum=100000,
    )
    header_timeout_s: float = _opt(
        10.0,
        "An HTTP request (a WebSocket upgrade too) must have arrived whole this long after connecting or after the "
        "previous response; an idle keep-alive connection is closed then. Also the longest an upload's body may "
        "stall (HTTP 408).",
        minimum=1.0,
        maximum=3600.0,
    )
    first_message_timeout_s: float = _opt(
        10.0,
        "A connection holding no session (a WebSocket before its config or audio, a Wyoming connection before its "
        "first event or between rounds) that sends nothing for this long is closed; a WebSocket whose first "
        "message is still arriving then gets as long again.",
        minimum=1.0,
        maximum=3600.0,
    )
    write_timeout_s: float = _opt(
        10.0, "A client that reads nothing the daemon sends for this long is disconnected.", minimum=0.1, maximum=3600.0
    )

    # OpenAI-compatible API
    max_upload_mb: int = _opt(
        25,
        "Largest audio file an upload API (POST /v1/audio/transcriptions, /v1/listen, /v1/speech-to-text, /stt) "
        "accepts, in MB (2^20 bytes); larger ones get HTTP 413.",
        minimum=1,
        maximum=1024,
    )
    max_upload_audio_s: float = _opt(
        14400.0,
        "Longest audio an upload API (POST /v1/audio/transcriptions, /v1/listen, /v1/speech-to-text, /stt) "
        "transcribes, in seconds, checked on the duration the file declares and on what it decodes to (a small "
        "file can hold days of FLAC silence); longer gets HTTP 400 audio_too_long.",
        minimum=1.0,
        maximum=1_000_000.0,
    )
    min_upload_kb_per_s: int = _opt(
        16,
        "Slowest an upload's body may arrive, in KB (2^10 bytes) per second: after header_timeout_s it must have "
        "sent this much for every further second (a 25 MB file may take 27 minutes); a slower one gets HTTP 408.",
        minimum=1,
        maximum=1_000_000,
    )

    # Back-pressure and shutdown
    max_pending_finals: int = _opt(
        4,
        "Finals one session may have waiting for the engine; its client's audio is not read meanwhile (back-pressure).",
        minimum=1,
        maximum=100,
    )
    max_feed_ahead_s: float = _opt(
        20.0,
        "How far ahead of real time a session's audio may arrive (a file sent at full speed); "
        "beyond it the client's audio is read at real-time pace.",
        minimum=1.0,
        maximum=3600.0,
    )
    websocket_read_ahead_mb: int = _opt(
        16,
        "WebSocket messages read ahead of a session held back by back-pressure, per connection: the client's "
        "keep-alive pings queue behind its audio and are answered only as it is read, so a client sending a file "
        "faster than real time keeps its connection until its audio outruns this.",
        minimum=1,
        maximum=1024,
    )
    shutdown_timeout_s: float = _opt(
        10.0,
        "On SIGTERM/SIGINT: time to send pending finals and close connections; what remains is then cancelled.",
        minimum=0.5,
        maximum=600.0,
    )

    # Uploads (OpenAI's, Deepgram's, ElevenLabs' and Cartesia's file APIs)
    max_uploads: int = _opt(
        8,
        "Most uploads served at once, to any upload API (POST /v1/audio/transcriptions, /v1/listen, "
        "/v1/speech-to-text, /stt; each holds its file in memory); more get HTTP 503.",
        minimum=1,
        maximum=10000,
    )
    max_uploads_per_address: int = _opt(
        4,
        "Most of those one client address may have at once, so that one client cannot take every upload slot "
        "(behind a reverse proxy every client has the proxy's address: raise it there).",
        minimum=1,
        maximum=10000,
    )

    # Household names from Home Assistant (the add-on sets ha_url and ha_token itself)
    household_names: bool = _opt(
        True, "Bias recognition with the household's names read from Home Assistant (when ha_url is set)."
    )
    ha_url: str = _opt(
        "", "Home Assistant to read the household's names from, e.g. http://homeassistant.local:8123; empty: none."
    )
    ha_token: str = _opt(
        "",
        "Home Assistant long-lived access token of an administrator; better in SATELLITE_ASR_HA_TOKEN or "
        "ha_token_file than on the command line or in a config file.",
        secret=True,
    )
    ha_token_file: str = _opt("", "File holding the Home Assistant access token (e.g. a Docker or systemd secret).")
    ha_names_limit: int = _opt(
        -1,
        "Household names given to the engine as context, the most useful first; -1: the engine's choice (whisper "
        "none: it decodes a final again with the few names near what it heard; Qwen3-ASR 100). Transcripts are "
        "also corrected towards the names.",
        minimum=-1,
        maximum=1000,
    )

    log_level: str = _opt("INFO", "Log level.", choices=LOG_LEVELS)

    @property
    def default_language(self) -> str | None:
        """The language a session gets when its client names none; None: the engine detects it."""
        return self.language or None

    def home_assistant_token(self) -> str:
        """`ha_token`, or the content of `ha_token_file` (read when asked, so a rotated secret is seen)."""
        if not self.ha_token_file:
            return self.ha_token.strip()
        try:
            return Path(self.ha_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"ha_token_file {self.ha_token_file}: cannot be read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"ha_token_file {self.ha_token_file}: not UTF-8 text; it must hold the token alone"
            ) from None


VAD_FIELDS = {
    "threshold": "vad_threshold",
    "min_speech_ms": "min_speech_ms",
    "turn_detection": "turn_detection",
    "min_silence_ms": "min_silence_ms",
    "silence_ms": "silence_ms",
}
"""The endpointing settings a WebSocket session may set for itself (and is checked as), by their key
in its config message's `vad` object (docs/protocol.md), which are also `EndpointerConfig`'s field
names. Here, beside the settings, so that the file's error for a `vad:` object names the very ones
the protocol takes, and the endpointer reads each from its setting."""


def setting_fields() -> list[dataclasses.Field[Any]]:
    """The declared settings, in declaration order."""
    return list(dataclasses.fields(Settings))


def setting_default(f: dataclasses.Field[Any]) -> Any:
    return f.default


def _kind(f: dataclasses.Field[Any]) -> type:
    return type(setting_default(f))


def _meant(name: str, known: set[str]) -> str | None:
    """The setting a mistyped key most likely meant: `silence-ms` (the flag's spelling) or
    `Silence_MS` for `silence_ms`, a close misspelling (`silense_ms`); None if none is close."""
    spelled = name.lower().replace("-", "_")
    if spelled in known:
        return spelled
    close = difflib.get_close_matches(spelled, known, n=1, cutoff=0.8)
    return close[0] if close else None


def bound_text(value: float | None) -> str:
    """A setting's minimum or maximum as a person types it: whole numbers in full (1099511627776,
    not %g's rounded 1.09951e+12, which is not the limit), others as short as they go (0.05)."""
    if value is None:
        return "any"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def coerce(name: str, raw: Any) -> Any:
    """Turn a raw value (YAML value, environment string or CLI string) into the key's type, checked."""
    fields = {f.name: f for f in setting_fields()}
    if name not in fields:
        meant = _meant(name, set(fields))
        if name == "vad":  # the WebSocket config message's object (docs/protocol.md), copied into a file
            raise ConfigError(
                f"unknown setting 'vad': settings are flat keys ({', '.join(VAD_FIELDS.values())}); "
                "a vad object is what a WebSocket client sends in its config message"
            )
        if meant is not None:
            raise ConfigError(f"unknown setting '{name}'; did you mean '{meant}'?")
        raise ConfigError(f"unknown setting '{name}'; known settings: {', '.join(sorted(fields))}")
    f = fields[name]
    kind = _kind(f)
    meta = f.metadata
    shown = _shown(raw) if f.repr else "a value not shown (a secret)"
    try:
        value = _convert(kind, raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {_describe(kind)}, got {shown}{_yaml_hint(f, raw)}") from None
    choices = meta.get("choices")
    if choices is not None:
        if name == "log_level" and isinstance(value, str):
            value = value.upper()
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {_shown(raw)}")
    lo, hi = meta.get("minimum"), meta.get("maximum")
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        raise ConfigError(f"{name}: must be between {bound_text(lo)} and {bound_text(hi)}, got {_shown(raw)}")
    return value


def _shown(raw: Any) -> str:
    """`raw` as a message quotes it; YAML reads a hexadecimal, octal or binary whole number of any
    length, and Python writes none out past `sys.get_int_max_str_digits()` (4300) decimal digits."""
    try:
        return repr(raw)
    except ValueError:
        return f"a whole number of more than {sys.get_int_max_str_digits()} digits"


def _yaml_hint(f: dataclasses.Field[Any], raw: Any) -> str:
    """How to write text that YAML 1.1 reads as something else (`language: no` is false,
    `context: 2024-01-01` a date). No conversion back: `no` and `false` give the same value."""
    items = raw if isinstance(raw, list) else [raw]
    misread = next((x for x in items if isinstance(x, (bool, datetime.date))), None)
    if _kind(f) not in (str, tuple) or misread is None:
        return ""
    if isinstance(misread, bool):
        read_as, example = "an unquoted yes, no, on, off, true or false as true or false", "yes" if misread else "no"
    else:
        read_as, example = "an unquoted date as a date", str(misread)
    example = f'"{example if f.repr else "..."}"'
    if isinstance(raw, list):
        return f"; YAML reads {read_as}: quote each item, e.g. {f.name}: [{example}]"
    return f"; YAML reads {read_as}: quote the text, e.g. {f.name}: {example}"


def _describe(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", tuple: "a list of text", str: "text"}[kind]


def _convert(kind: type, raw: Any) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind is int:
        if isinstance(raw, (bool, float)):
            raise ValueError(raw)
        return int(raw)
    if kind is float:
        if isinstance(raw, bool):
            raise ValueError(raw)
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(raw)
        return value
    if kind is tuple:
        # A repeated flag gives a list whose items may each be comma-separated too.
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(_scalar_text(x) for x in items):
            raise ValueError(raw)
        return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())
    if raw is None:
        return ""
    if not _scalar_text(raw):
        raise ValueError(raw)
    return str(raw)


def _scalar_text(raw: Any) -> bool:
    """A value text settings take as it is written: YAML's booleans and dates are not (see `_yaml_hint`)."""
    return isinstance(raw, (str, int, float)) and not isinstance(raw, bool)


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from defaults < `config_file` < `SATELLITE_ASR_*` environment < `overrides` (CLI)."""
    values: dict[str, Any] = {}
    if config_file:
        _over(values, _read_yaml(Path(config_file)))
    env = os.environ if environ is None else environ
    known = {f.name for f in setting_fields()}
    from_env = {}
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                meant = _meant(name, known)
                hint = f"; did you mean {ENV_PREFIX}{meant.upper()}?" if meant is not None else ""
                raise ConfigError(f"environment variable {key}: unknown setting '{name}'{hint}")
            from_env[name] = coerce(name, raw)
    _over(values, from_env)
    _over(values, {name: coerce(name, raw) for name, raw in (overrides or {}).items() if raw is not None})
    settings = Settings(**values)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key: give both or neither")
    check_silences(settings.min_silence_ms, settings.silence_ms)
    if settings.api_key and settings.api_key_file:
        raise ConfigError("api_key and api_key_file: give one or neither")
    if settings.wyoming_reserved_sessions >= settings.max_sessions:
        raise ConfigError(
            f"wyoming_reserved_sessions ({settings.wyoming_reserved_sessions}) must be less than max_sessions "
            f"({settings.max_sessions}), or no WebSocket session could open"
        )
    check_home_assistant(settings)
    if settings.engine == "qwen3-remote" and not settings.remote_urls:
        raise ConfigError("engine qwen3-remote needs remote_urls: the base URL of at least one vLLM server")
    check_remote_urls(settings.remote_urls)
    if settings.zeroconf:  # a leftover interface or name does not stop a daemon that does not advertise
        check_zeroconf(settings)
    return settings


ALTERNATIVES = (("api_key", "api_key_file"), ("ha_token", "ha_token_file"))
"""Two ways to give one secret: a layer that gives one of them drops the other from the layers below."""


def _over(values: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """`layer` over `values`, so that `--api-key` on the command line replaces an `api_key_file`
    from the config file instead of clashing with it (given together in one layer they still do)."""
    for pair in ALTERNATIVES:
        for name, other in (pair, pair[::-1]):
            if layer.get(name) and other not in layer:
                values.pop(other, None)
    values.update(layer)


def check_home_assistant(settings: Settings) -> None:
    """A URL needs exactly one token (and a token a URL); the URL must be one a client can open."""
    if settings.ha_token and settings.ha_token_file:
        raise ConfigError("ha_token and ha_token_file: give one or the other")
    has_token = bool(settings.ha_token or settings.ha_token_file)
    if settings.ha_url and not has_token:
        raise ConfigError("ha_url needs an access token: set ha_token_file or SATELLITE_ASR_HA_TOKEN")
    if has_token and not settings.ha_url:
        raise ConfigError("an access token was given without ha_url (the Home Assistant to read names from)")
    if settings.ha_url:
        try:
            websocket_url(settings.ha_url)
        except ValueError as exc:
            raise ConfigError(f"ha_url: {exc}") from None
        if not settings.home_assistant_token():
            raise ConfigError("the Home Assistant access token is empty")


def check_remote_urls(urls: Sequence[str]) -> None:
    """No user or password in a vLLM server's URL: errors quote the URL, to clients and in logs.
    And a URL with its scheme: `192.168.1.20:8000` was taken, and every probe of it failed."""
    if any("@" in urlsplit(url.strip()).netloc for url in urls):
        raise ConfigError("remote_urls: a vLLM server URL must not hold a user or password (set remote_api_key)")
    for url in urls:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"remote_urls: {url!r} is not an http:// or https:// URL of a server (e.g. http://192.168.1.20:8000)"
            )


def check_zeroconf(settings: Settings) -> None:
    """Interfaces are chosen by address: a name (eth0) would only fail later, at run time. An
    instance name with a dot at an end, or two in a row, is advertised but cannot be resolved."""
    name = settings.zeroconf_name.strip()
    if name.startswith(".") or name.endswith(".") or ".." in name:
        raise ConfigError(
            f"zeroconf_name: {settings.zeroconf_name!r} has a dot at its start or end, or two in a row; clients "
            "could not resolve the service it names: drop those dots"
        )
    for entry in settings.zeroconf_interface:
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            raise ConfigError(
                f"zeroconf_interface: {entry!r} is not an IP address; it takes addresses of this machine's "
                "interfaces (e.g. 192.168.1.20), not interface names"
            ) from None


def check_silences(min_silence_ms: int, silence_ms: int) -> None:
    """The short silence (a complete command) cannot be longer than the long one."""
    if min_silence_ms > silence_ms:
        raise ConfigError(f"min_silence_ms ({min_silence_ms}) must not be longer than silence_ms ({silence_ms})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}: line {line} is not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: {_yaml_problem(exc)}") from None
    except (ValueError, TypeError):  # a value that is not of the type its tag says (`!!int abc`), or a long number
        raise ConfigError(f"config file {path}: {_construction_problem(text)}") from None
    except RecursionError:  # PyYAML composes nested lists and mappings by recursion
        raise ConfigError(f"config file {path}: lists or mappings nested too deeply to be settings") from None
    _refuse_anchors(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of setting names to values")
    return {str(name): coerce(str(name), raw) for name, raw in data.items()}


def _refuse_anchors(path: Path, text: str) -> None:
    """A settings file has no use for YAML's anchors and aliases, and a value that starts with & is
    silently read as one: `api_key: &Kitchen-Pass1` is no key at all, and the daemon would run
    open. The value itself is not quoted in the message: it may be the secret."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise ConfigError(
                f"config file {path}: line {line}: a value starting with & or * is read as a YAML anchor or "
                "alias; quote it"
            )


INT_TAG = "tag:yaml.org,2002:int"
"""YAML's tag of a whole number (`!!int`), as PyYAML's events name it."""


def _construction_problem(text: str) -> str:
    """Why PyYAML's reading of a value raised a `ValueError`: a whole number longer than Python
    converts from decimal text (its `int()` refuses one of more than 4300 digits), said with its line;
    else a value that is not of the type its tag says (`!!int abc`), not quoted (it may be a secret)."""
    limit = sys.get_int_max_str_digits()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if not isinstance(event, yaml.ScalarEvent) or not (event.implicit[0] or event.tag == INT_TAG):
            continue
        digits = event.value.lstrip("+-").replace("_", "")
        if len(digits) > limit and digits.isascii() and digits.isdigit():
            line = event.start_mark.line + 1 if event.start_mark else "?"
            return (
                f"line {line}: a whole number of {len(digits)} digits, more than the {limit} this server reads; "
                "no setting takes one (quote it if it is text)"
            )
    return "a value is not of the type its !! tag names; quote it"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the line: that line may hold a secret
    (an unterminated `ha_token: "eyJ...`)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {exc}"  # a ReaderError names a character and its position only
    if isinstance(exc, yaml.constructor.ConstructorError) and exc.problem == "found unhashable key":
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{where}a list or mapping is used as a key; the keys are the settings' names"
    if isinstance(exc, (yaml.composer.ComposerError, yaml.constructor.ConstructorError)):
        # Their problem quotes the alias or tag, which is the value itself (`api_key: !Pass`).
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"not valid YAML: a value starting with !, * or & is read as a YAML tag or alias{where}; quote it"
    parts = [
        f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark else text
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
        if text
    ]
    return "not valid YAML: " + ": ".join(parts)
