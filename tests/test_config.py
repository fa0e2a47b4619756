"""Settings: precedence, validation messages, and the documented example file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from satellite_asr.cli import build_parser
from satellite_asr.config import (
    ConfigError,
    Settings,
    bound_text,
    coerce,
    load_settings,
    setting_default,
    setting_fields,
)
from satellite_asr.protocols import websocket
from tests.helpers import serve_on_loopback

ROOT = Path(__file__).parent.parent


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.host == "0.0.0.0" and settings.http_port == 10301
    assert settings.silence_ms == 800 and settings.min_speech_ms == 300 and settings.max_utterance_s == 30.0


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("silence_ms: 500\nmin_speech_ms: 200\nmax_sessions: 5\n")
    env = {"SATELLITE_ASR_SILENCE_MS": "600", "SATELLITE_ASR_MIN_SPEECH_MS": "250"}
    settings = load_settings(config, environ=env, overrides={"silence_ms": "700"})
    assert settings.silence_ms == 700  # CLI
    assert settings.min_speech_ms == 250  # environment
    assert settings.max_sessions == 5  # file
    assert settings.http_port == 10301  # default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"silence_ms": "abc"}, "silence_ms: expected a whole number, got 'abc'"),
        ({"silence_ms": "20"}, "silence_ms: must be between 100 and 10000"),
        ({"engine": "gpt"}, "engine: must be one of auto, whisper"),
        ({"vad_threshold": "nan"}, "vad_threshold: expected a number"),
        ({"zeroconf": "maybe"}, "zeroconf: expected true or false"),
        ({"tls_cert": "a.pem"}, "tls_cert and tls_key: give both or neither"),
        # the limit as typed, not %g's 1.09951e+12 (which is not it) or 1e+06
        ({"vllm_kv_cache_bytes": str(2**41)}, "vllm_kv_cache_bytes: must be between 0 and 1099511627776, got"),
        ({"max_context_chars": "2000000"}, "max_context_chars: must be between 0 and 1000000, got"),
        ({"vad_threshold": "0.99"}, "vad_threshold: must be between 0.05 and 0.95, got"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(environ={}, overrides=overrides)


def test_unknown_keys_are_errors_everywhere(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("silense_ms: 500\n")
    with pytest.raises(ConfigError, match="unknown setting 'silense_ms'"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="SATELLITE_ASR_SILENSE_MS"):
        load_settings(environ={"SATELLITE_ASR_SILENSE_MS": "1"})


@pytest.mark.parametrize(
    ("key", "meant"), [("silence-ms", "silence_ms"), ("Silence_MS", "silence_ms"), ("silense_ms", "silence_ms")]
)
def test_a_mistyped_key_is_said_with_the_setting_it_most_likely_meant(tmp_path: Path, key: str, meant: str) -> None:
    """A key spelled as its flag (`silence-ms:`, what `--silence-ms` suggests) or misspelled got
    the list of all 70 settings to search; now the one it most likely meant. No close one: the list."""
    config = tmp_path / "c.yaml"
    config.write_text(f"{key}: 500\n")
    with pytest.raises(ConfigError, match=f"^unknown setting '{key}'; did you mean '{meant}'\\?$"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match=r"'silense_ms'; did you mean SATELLITE_ASR_SILENCE_MS\?$"):
        load_settings(environ={"SATELLITE_ASR_SILENSE_MS": "1"})
    config.write_text("port: 10301\n")
    with pytest.raises(ConfigError, match=r"^unknown setting 'port'; known settings: allowed_hosts, "):
        load_settings(config, environ={})


def test_a_vad_object_in_the_file_is_told_the_flat_keys_a_websocket_vad_object_sets(tmp_path: Path) -> None:
    """`vad: {silence_ms: 500}`, the WebSocket config message's shape copied into a file, is told
    the settings behind the vad object's fields, exactly: the file's error once named them by hand."""
    config = tmp_path / "c.yaml"
    config.write_text("vad:\n  silence_ms: 500\n")
    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})
    said = re.fullmatch(
        r"unknown setting 'vad': settings are flat keys \((.*)\); "
        "a vad object is what a WebSocket client sends in its config message",
        str(error.value),
    )
    assert said is not None and said[1].split(", ") == list(websocket.VAD_FIELDS.values())


def test_unreadable_or_malformed_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("silence_ms: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(listed, environ={})


def test_a_file_nested_too_deeply_for_yaml_is_a_configuration_error(tmp_path: Path) -> None:
    """PyYAML recurses once per level: 5000 nested lists were a RecursionError's traceback, not a message."""
    config = tmp_path / "c.yaml"
    config.write_text("context: " + "[" * 5000 + "]" * 5000 + "\n")
    result = serve_on_loopback("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"configuration error: config file {config}: lists or mappings nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_file_is_reported_by_line_without_quoting_it(tmp_path: Path) -> None:
    """PyYAML's message quotes the offending line, which may be an unterminated secret."""
    config = tmp_path / "c.yaml"
    config.write_text('silence_ms: 800\nha_token: "eyJhbGciOi-secret-part\nlog_level: INFO\n')
    result = serve_on_loopback("--config", str(config))
    assert result.returncode == 2
    assert f"config file {config}: not valid YAML: while scanning a quoted scalar at line 2, column 11" in result.stderr
    assert "secret-part" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "value", ["!Kitchen-Pass1", "*Kitchen-Pass1", "!!int Kitchen-Pass1", "&Kitchen-Pass1", "&Kitchen-Pass1 x"]
)
def test_a_secret_read_as_a_yaml_tag_or_alias_is_not_quoted(tmp_path: Path, value: str) -> None:
    """A key may start with !, * or &, which YAML reads as a tag, an alias or an anchor: PyYAML's own
    message quotes it, `!!int` raised a bare ValueError that named neither the file nor the key, and
    an anchor was silently no key (`&Kitchen-Pass1`: the daemon ran without one) or another one."""
    config = tmp_path / "c.yaml"
    config.write_text(f"silence_ms: 800\napi_key: {value}\n")
    result = serve_on_loopback("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"configuration error: config file {config}: " in result.stderr and "quote it" in result.stderr
    assert "Kitchen-Pass1" not in result.stderr and "Traceback" not in result.stderr


DIGITS = "9" * 5000
"""A whole number longer than Python converts from text (4300 digits)."""


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (f"silence_ms: 800\nmax_sessions: {DIGITS}\n", "line 2: a whole number of 5000 digits"),
        (f"context: !!int {DIGITS}\n", "line 1: a whole number of 5000 digits"),
        (f"? {DIGITS}\n: 1\n", "line 1: a whole number of 5000 digits"),
        ("? [silence_ms, 800]\n: 1\n", "line 1, column 3: a list or mapping is used as a key"),
        ("silence_ms: 800\n? {max_sessions: 4}\n: 1\n", "line 2, column 3: a list or mapping is used as a key"),
    ],
)
def test_a_number_too_long_for_python_or_a_list_as_a_key_is_told_as_itself(
    tmp_path: Path, text: str, said: str
) -> None:
    """Both were said to be a value starting with !, * or & read as a YAML tag or alias (fuzzing)."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = serve_on_loopback("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"satellite-asr: configuration error: config file {config}: {said}" in result.stderr, result.stderr
    assert "tag" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "value"), [("max_sessions", "0x" + "f" * 5000), ("allowed_hosts", "[0x" + "f" * 5000 + "]")]
)
def test_a_whole_number_too_long_to_print_is_refused_without_printing_it(
    tmp_path: Path, setting: str, value: str
) -> None:
    """YAML reads a hexadecimal number of any length (Python's limit is for decimal text), and the
    message quoting it raised Python's ValueError in its place, naming neither file nor setting."""
    config = tmp_path / "c.yaml"
    config.write_text(f"{setting}: {value}\n")
    result = serve_on_loopback("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"satellite-asr: configuration error: {setting}: " in result.stderr, result.stderr
    assert "a whole number of more than 4300 digits" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", ["config", "ha_token_file", "api_key_file"])
def test_a_file_that_is_not_utf8_is_named_with_its_setting(tmp_path: Path, setting: str) -> None:
    """Not a bare UnicodeDecodeError that names neither the file nor the setting."""
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("silence_ms: 700\nzeroconf_name: K\u00fcche\n".encode("latin-1"))
    flags = {
        "config": ["--config", str(latin1)],
        "ha_token_file": ["--ha-url", "http://127.0.0.1:9", "--ha-token-file", str(latin1)],
        "api_key_file": ["--api-key-file", str(latin1)],
    }[setting]
    result = serve_on_loopback(*flags)
    assert result.returncode == 2, result.stderr
    expected = {
        "config": f"config file {latin1}: line 2 is not UTF-8 text",
        "ha_token_file": f"ha_token_file {latin1}: not UTF-8 text",
        "api_key_file": f"api_key_file {latin1}: not UTF-8 text",
    }[setting]
    assert f"satellite-asr: configuration error: {expected}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("line", "message", "quoted", "value"),
    [
        (
            "language: no",
            "language: expected text, got False; YAML reads an unquoted yes, no, on, off, true or false as true or "
            'false: quote the text, e.g. language: "no"',
            'language: "no"',
            "no",
        ),
        (
            "context: 2024-01-01",
            "context: expected text, got datetime.date(2024, 1, 1); YAML reads an unquoted date as a date: quote the "
            'text, e.g. context: "2024-01-01"',
            'context: "2024-01-01"',
            "2024-01-01",
        ),
        (
            "allowed_hosts: [asr.lan, on]",
            "allowed_hosts: expected a list of text, got ['asr.lan', True]; YAML reads an unquoted yes, no, on, off, "
            'true or false as true or false: quote each item, e.g. allowed_hosts: ["yes"]',
            'allowed_hosts: [asr.lan, "on"]',
            ("asr.lan", "on"),
        ),
    ],
)
def test_text_that_yaml_reads_as_another_type_is_refused_with_how_to_quote_it(
    tmp_path: Path, line: str, message: str, quoted: str, value: object
) -> None:
    """YAML 1.1 reads `no` as false and `2024-01-01` as a date; `no` cannot be told from `false`
    afterwards, so nothing is converted back: the message says how to quote it."""
    config = tmp_path / "c.yaml"
    config.write_text(line + "\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config, environ={})
    assert str(refused.value) == message
    config.write_text(quoted + "\n")
    assert getattr(load_settings(config, environ={}), line.split(":")[0]) == value


def test_example_config_documents_every_key_with_its_default_and_help() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    example = yaml.safe_load(text)
    fields = {f.name: setting_default(f) for f in setting_fields()}
    assert set(example) == set(fields), "config.example.yaml must list every setting"
    settings = load_settings(ROOT / "config.example.yaml", environ={})
    assert settings == Settings(), "the example's values are the defaults"
    comments = {}  # each setting's comment: the lines of `# ...` right above its key, joined
    for block in text.split("\n\n"):
        *lines, key = block.strip().splitlines()
        if all(line.startswith("# ") for line in lines) and not key.startswith("#"):
            comments[key.split(":")[0]] = " ".join(line.removeprefix("# ") for line in lines)
    for f in setting_fields():
        meta = f.metadata
        documented = meta["help"]
        if meta["choices"]:
            documented += f" (one of: {', '.join(meta['choices'])})"
        elif meta["minimum"] is not None:
            documented += f" (range {bound_text(meta['minimum'])}..{bound_text(meta['maximum'])})"
        assert comments[f.name] == documented, f"config.example.yaml: {f.name}'s comment differs from its help"


USER_DOCS = (
    "README.md",
    "docs/protocol.md",
    "docs/openai.md",
    "docs/deepgram.md",
    "docs/assemblyai.md",
    "docs/elevenlabs.md",
    "docs/cartesia.md",
    "docs/soniox.md",
    "docs/speechmatics.md",
    "docs/gladia.md",
    "docs/mistral.md",
    "docs/xai.md",
    "docs/gradium.md",
    "docs/meta.md",
    "docs/sarvam.md",
    "docs/zoom.md",
    "docs/together.md",
    "docs/groq.md",
    "docs/azure.md",
    "docs/smallest.md",
    "docs/baseten.md",
    "docs/simplismart.md",
    "docs/fireworks.md",
    "docs/telnyx.md",
    "docs/inworld.md",
    "docs/wyoming.md",
    "docs/security.md",
    "docs/browser.md",
    "addon/DOCS.md",
)
DOCUMENTED_DEFAULT = re.compile(r"`([a-z0-9_]+)`[A-Za-z ]{0,25}\((?:default )?(-?[0-9.]+)(?: ?(?:s|ms|MB|KB/s))?[,)]")
"""A setting quoted with its default beside it: `max_sessions` (32), `idle_timeout_s` (default 60 s)."""


def test_defaults_quoted_in_the_user_docs_are_the_settings_defaults() -> None:
    """The docs quote defaults in many places; a default changed in config.py alone would leave them wrong."""
    defaults = {f.name: setting_default(f) for f in setting_fields()}
    quoted = [
        (doc, name, value)
        for doc in USER_DOCS
        for name, value in DOCUMENTED_DEFAULT.findall((ROOT / doc).read_text())
        if name in defaults
    ]
    assert len(quoted) > 25, "the pattern still finds the docs' quoted defaults"
    wrong = [(doc, name, value, defaults[name]) for doc, name, value in quoted if float(value) != defaults[name]]
    assert not wrong, "docs quote defaults the settings do not have: (doc, setting, quoted, default)"


DOCUMENTED_RANGES = {
    "docs/protocol.md": re.compile(r"^\| `vad\.([a-z_]+)` \|[^|]*\| ([0-9.]+)\u2013([0-9.]+)", re.MULTILINE),
    "docs/openai.md": re.compile(r"→ `([a-z_]+)` \(([0-9.]+)\u2013([0-9.]+)\)"),
}
"""Per-session values and the range the docs say they take: the `config` table's `vad.*` rows, and
the Realtime fields mapped onto settings (`silence_duration_ms` → `silence_ms` (100 to 10000), with an en dash)."""


def test_ranges_quoted_in_the_protocol_docs_are_the_settings_ranges() -> None:
    """A session's value is checked against its setting's range; the docs quote the range."""
    fields = {f.name: f.metadata for f in setting_fields()}
    quoted = [
        (doc, name, float(low), float(high))
        for doc, pattern in DOCUMENTED_RANGES.items()
        for name, low, high in pattern.findall((ROOT / doc).read_text())
    ]
    assert len(quoted) >= 7, "the patterns still find the docs' ranges"
    wrong = []
    for doc, name, low, high in quoted:
        setting = name if name in fields else f"vad_{name}"
        if (fields[setting]["minimum"], fields[setting]["maximum"]) != (low, high):
            wrong.append((doc, name, low, high, fields[setting]["minimum"], fields[setting]["maximum"]))
    assert not wrong, "docs quote ranges the settings do not have: (doc, field, low, high, minimum, maximum)"


def test_every_setting_has_a_serve_flag() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--silence-ms", "900", "--no-zeroconf", "--zeroconf-interface", "127.0.0.1"])
    assert args.silence_ms == "900" and args.zeroconf is False and args.zeroconf_interface == ["127.0.0.1"]
    serve_help = subprocess.run(
        [sys.executable, "-m", "satellite_asr", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for f in setting_fields():
        assert "--" + f.name.replace("_", "-") in serve_help


def test_list_flags_are_repeatable_and_comma_separated() -> None:
    args = build_parser().parse_args(
        ["serve", "--remote-urls", "http://10.1.2.3:8000, http://10.1.2.4:8000", "--remote-urls=http://10.1.2.5:8000"]
    )
    settings = load_settings(None, environ={}, overrides={f.name: getattr(args, f.name) for f in setting_fields()})
    assert settings.remote_urls == ("http://10.1.2.3:8000", "http://10.1.2.4:8000", "http://10.1.2.5:8000")


def test_serve_stops_with_a_clear_message_on_a_bad_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "satellite_asr", "serve", "--http-port", "99999"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "http_port: must be between 0 and 65535" in result.stderr


def test_a_zeroconf_interface_that_is_not_an_address_stops_start_up() -> None:
    """An interface name was only a warning once the daemon ran, and it then advertised nothing.
    With zeroconf off, a leftover value is not checked: it was ignored before, and still is."""
    result = serve_on_loopback("--zeroconf", "--zeroconf-interface", "127.0.0.1,eth0")
    assert result.returncode == 2, result.stderr
    assert "configuration error: zeroconf_interface: 'eth0' is not an IP address" in result.stderr
    leftover = load_settings(environ={}, overrides={"zeroconf": False, "zeroconf_interface": "eth0"})
    assert leftover.zeroconf_interface == ("eth0",)
    assert load_settings(environ={}, overrides={"zeroconf_interface": "127.0.0.1,::1"}).zeroconf_interface == (
        "127.0.0.1",
        "::1",
    )


def test_home_assistant_needs_a_url_and_exactly_one_token(tmp_path: Path) -> None:
    token_file = tmp_path / "ha_token"
    token_file.write_text("file-token-51c2\n")
    url = "http://homeassistant.local:8123"
    assert load_settings(environ={"SATELLITE_ASR_HA_URL": url, "SATELLITE_ASR_HA_TOKEN": "env-token"}).ha_token
    from_file = load_settings(environ={}, overrides={"ha_url": url, "ha_token_file": str(token_file)})
    assert from_file.home_assistant_token() == "file-token-51c2", "read from the file, without its newline"
    for overrides, message in [
        ({"ha_url": url}, "ha_url needs an access token"),
        ({"ha_token": "t"}, "an access token was given without ha_url"),
        ({"ha_url": url, "ha_token": "t", "ha_token_file": str(token_file)}, "give one or the other"),
        ({"ha_url": "homeassistant.local", "ha_token": "t"}, "ha_url: not a Home Assistant URL"),
        ({"ha_url": url, "ha_token_file": str(tmp_path / "missing")}, "ha_token_file .*missing: cannot be read"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(environ={}, overrides=overrides)


def test_a_higher_layer_giving_one_of_a_secret_pair_replaces_the_other(tmp_path: Path) -> None:
    """`--api-key` over a config file's `api_key_file` is a replacement, not a clash; in one layer
    both are still refused."""
    token_file = tmp_path / "ha_token"
    token_file.write_text("file-token\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"api_key_file: {token_file}\nha_url: http://ha:8123\nha_token_file: {token_file}\n")
    settings = load_settings(config, environ={"SATELLITE_ASR_HA_TOKEN": "env-token"}, overrides={"api_key": "cli-key"})
    assert (settings.api_key, settings.api_key_file) == ("cli-key", "")
    assert (settings.ha_token, settings.ha_token_file) == ("env-token", "")
    assert settings.home_assistant_token() == "env-token"
    config.write_text("api_key: file-key\nha_url: http://ha:8123\nha_token: file-token\n")
    environ = {"SATELLITE_ASR_HA_TOKEN_FILE": str(token_file), "SATELLITE_ASR_API_KEY_FILE": str(token_file)}
    settings = load_settings(config, environ=environ)
    assert (settings.api_key, settings.api_key_file) == ("", str(token_file))
    assert settings.home_assistant_token() == "file-token"
    with pytest.raises(ConfigError, match="api_key and api_key_file: give one or neither"):
        load_settings(config, environ={}, overrides={"api_key": "cli-key", "api_key_file": str(token_file)})


def test_a_remote_url_with_a_user_or_password_is_refused_without_repeating_it() -> None:
    """Errors quote a server's URL, and they go to clients and logs; remote_api_key authenticates."""
    good = "http://10.1.2.3:8000"
    assert load_settings(environ={}, overrides={"remote_urls": good}).remote_urls == (good,)
    with pytest.raises(ConfigError, match="remote_urls: a vLLM server URL must not hold a user or password") as refused:
        load_settings(environ={}, overrides={"remote_urls": f"{good},http://admin:hunter2@10.1.2.4:8000"})
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("url", ["10.1.2.3:8000", "ftp://10.1.2.3:8000", "http://"])
def test_a_remote_url_without_its_http_scheme_or_host_is_refused(url: str) -> None:
    """Taken before, and the engine's probes of it failed forever with no word of why."""
    with pytest.raises(ConfigError, match=f"remote_urls: '{url}' is not an http:// or https:// URL of a server"):
        load_settings(environ={}, overrides={"remote_urls": url})
    assert load_settings(environ={}, overrides={"remote_urls": "https://gpu.lan"}).remote_urls == ("https://gpu.lan",)


def test_the_remote_engine_without_a_server_url_is_a_configuration_error() -> None:
    """Said at load time, as one message, rather than as the engine's traceback at start-up."""
    with pytest.raises(ConfigError, match="engine qwen3-remote needs remote_urls"):
        load_settings(environ={}, overrides={"engine": "qwen3-remote"})
    settings = load_settings(environ={}, overrides={"engine": "qwen3-remote", "remote_urls": "http://10.1.2.3:8000"})
    assert settings.remote_urls == ("http://10.1.2.3:8000",)


def test_the_token_is_not_in_the_settings_repr() -> None:
    settings = load_settings(environ={"SATELLITE_ASR_HA_URL": "http://ha:8123", "SATELLITE_ASR_HA_TOKEN": "tok-9e3b"})
    assert "tok-9e3b" not in repr(settings) and "ha_url='http://ha:8123'" in repr(settings)


@pytest.mark.parametrize("key", ["ha_token", "api_key", "remote_api_key"])
def test_a_secret_is_never_echoed_not_even_when_it_is_of_the_wrong_type(key: str) -> None:
    """A YAML list where text was meant ("ha_token: [eyJ...]") is refused without repeating it."""
    with pytest.raises(ConfigError, match=f"{key}: expected text") as refused:
        coerce(key, ["eyJ-secret-part"])
    assert "eyJ-secret-part" not in str(refused.value)
    overrides = {key: "key-4d1a"} | ({"ha_url": "http://ha"} if key == "ha_token" else {})
    assert "key-4d1a" not in repr(load_settings(environ={}, overrides=overrides))


def test_remote_urls_are_used_by_engine_auto_and_warned_of_beside_another_engine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`remote_urls` set and `engine` left at auto (the add-on's default) ran whisper on the CPU and
    never asked the vLLM servers: auto now takes them; an engine named otherwise is warned of."""
    from satellite_asr.engines.factory import create_engine

    servers = {"remote_urls": ["http://192.168.1.20:8000"]}
    with caplog.at_level("WARNING", logger="satellite_asr"):
        assert create_engine(load_settings(environ={}, overrides={"engine": "auto"} | servers)).info.name == (
            "qwen3-remote"
        )
        assert create_engine(load_settings(environ={}, overrides={"engine": "qwen3-remote"} | servers))
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        assert create_engine(load_settings(environ={}, overrides={"engine": "whisper"} | servers)).info.name == (
            "whisper"
        )
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    said = "remote_urls is set, but only engine qwen3-remote uses it: the whisper engine decodes here"
    assert any(m.startswith(said) for m in warned), warned
