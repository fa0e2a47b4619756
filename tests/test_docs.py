"""The user docs against the code, a class of drift at a time: every error code the daemon can
send, every metric, `/health` field, add-on option and zeroconf TXT property is documented where
its users look, and every flag, value or config file a doc quotes is what the code has, so that
a new one cannot ship undocumented and a renamed one cannot leave the docs naming what is gone."""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

import aiohttp
import yaml

from satellite_asr.cli import build_parser
from satellite_asr.clients.transcribe import OfflineTranscriber
from satellite_asr.config import load_settings
from satellite_asr.discovery import Advertisement, service_infos
from satellite_asr.events import FinalTranscript
from satellite_asr.homeassistant.client import State
from satellite_asr.metrics import Metrics
from satellite_asr.protocols import elevenlabs_upload, openai_rest, websocket
from satellite_asr.protocols.openai_realtime_config import EAGERNESS, SERVER_VAD_SETTINGS
from satellite_asr.protocols.wyoming import SENSITIVITY_SCALE
from satellite_asr.protocols.wyoming_framing import MAX_BLOCK_BYTES, MAX_HEADER_BYTES
from tests.helpers import FIXTURES, daemon_settings, running_daemon
from tests.test_config import USER_DOCS

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "satellite_asr"
PROTOCOL_DOCS = {
    "protocols/websocket.py": "docs/protocol.md",
    "protocols/openai_rest.py": "docs/openai.md",
    "protocols/openai_realtime.py": "docs/openai.md",
    "protocols/openai_realtime_config.py": "docs/openai.md",
    "protocols/deepgram.py": "docs/deepgram.md",
    "protocols/deepgram_flux.py": "docs/deepgram.md",
    "protocols/deepgram_prerecorded.py": "docs/deepgram.md",
    "protocols/assemblyai.py": "docs/assemblyai.md",
    "protocols/elevenlabs.py": "docs/elevenlabs.md",
    "protocols/elevenlabs_upload.py": "docs/elevenlabs.md",
    "protocols/cartesia.py": "docs/cartesia.md",
    "protocols/cartesia_batch.py": "docs/cartesia.md",
    "protocols/cartesia_turns.py": "docs/cartesia.md",
    "protocols/soniox.py": "docs/soniox.md",
    "protocols/speechmatics.py": "docs/speechmatics.md",
    "protocols/gladia.py": "docs/gladia.md",
    "protocols/mistral.py": "docs/mistral.md",
    "protocols/xai.py": "docs/xai.md",
    "protocols/xai_rest.py": "docs/xai.md",
    "protocols/gradium.py": "docs/gradium.md",
    "protocols/meta.py": "docs/meta.md",
    "protocols/sarvam.py": "docs/sarvam.md",
    "protocols/sarvam_rest.py": "docs/sarvam.md",
    "protocols/zoom.py": "docs/zoom.md",
    "protocols/sarvam_realtime.py": "docs/sarvam.md",
    "protocols/azure.py": "docs/azure.md",
    "protocols/azure_rest.py": "docs/azure.md",
    "protocols/smallest.py": "docs/smallest.md",
    "protocols/smallest_upload.py": "docs/smallest.md",
    "protocols/baseten.py": "docs/baseten.md",
    "protocols/simplismart.py": "docs/simplismart.md",
    "protocols/fireworks.py": "docs/fireworks.md",
    "protocols/telnyx.py": "docs/telnyx.md",
    "protocols/inworld.py": "docs/inworld.md",
    "protocols/wyoming.py": "docs/wyoming.md",
    "protocols/wyoming_framing.py": "docs/wyoming.md",
}
"""Where the codes a protocol's own module sends are documented; a code sent from a shared module
(sessions, access, limits) must be in at least one of the user docs."""
ERROR_CODE = re.compile(r"[a-z]+(?:_[a-z0-9]+)*")
CODE_CALLS = {"ProtocolError", "RequestError", "SessionError", "_invalid", "_refusal", "error_response", "error"}
"""Calls whose first text argument is an error code (`error` is a connection's error sender;
`log.error`'s messages are sentences, which `ERROR_CODE` does not match)."""


def _literals(node: ast.expr | None) -> set[str]:
    """The text constants `node` can be: one constant, or either side of `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _literals(node.body) | _literals(node.orelse)
    return set()


def _called(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def sent_codes(source: Path) -> set[str]:
    """The error codes a module sends: the first text argument of an error call, the code counted
    in `metrics.errors.labels(...)`, the code of a `(status, code, message)` refusal, and the
    `"code"` of an error body written out as a dict."""
    codes: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call):
            name = _called(node.func)
            counted = name == "labels" and _called(getattr(node.func, "value", node.func)) == "errors"
            if name in CODE_CALLS or counted:
                codes |= next((found for arg in node.args if (found := _literals(arg))), set())
        elif isinstance(node, ast.Tuple) and len(node.elts) >= 2:
            status, code = node.elts[0], node.elts[1]
            if isinstance(status, ast.Constant) and isinstance(status.value, int) and 400 <= status.value < 600:
                codes |= _literals(code)
        elif isinstance(node, ast.Dict):
            codes |= {
                text
                for key, value in zip(node.keys, node.values, strict=True)
                if isinstance(key, ast.Constant) and key.value == "code"
                for text in _literals(value)
            }
    return {code for code in codes if ERROR_CODE.fullmatch(code)}


def documented(doc: str) -> set[str]:
    return set(re.findall(r"`([a-z0-9_]+)`", (ROOT / doc).read_text()))


def test_every_error_code_the_daemon_sends_is_documented() -> None:
    everywhere = set().union(*(documented(doc) for doc in USER_DOCS))
    found: set[str] = set()
    missing = []
    for source in sorted(PACKAGE.rglob("*.py")):
        module = source.relative_to(PACKAGE).as_posix()
        codes = sent_codes(source)
        found |= codes
        doc = PROTOCOL_DOCS.get(module)
        named = documented(doc) if doc else everywhere
        missing += [(module, code, doc or "any user doc") for code in sorted(codes - named)]
    assert len(found) >= 35, f"the scan still finds the codes the daemon sends: {sorted(found)}"
    assert not missing, "error codes the daemon sends that the docs do not name: (module, code, where)"


def _exposed_metrics() -> set[str]:
    """The metric names a scrape shows (a counter's with its `_total`)."""
    return {f.name + ("_total" if f.type == "counter" else "") for f in Metrics().registry.collect()}


def test_the_readme_lists_every_metric_and_the_docs_name_only_real_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(satellite_asr_[a-z_]+)(?:\{[a-z]+\})?` \|", readme, re.MULTILINE))
    assert listed == _exposed_metrics(), "README's metrics table differs from the metrics the daemon has"
    named = {
        (doc, name) for doc in USER_DOCS for name in re.findall(r"satellite_asr_[a-z_]+", (ROOT / doc).read_text())
    }
    unknown = {(doc, name) for doc, name in named if name not in _exposed_metrics()}
    assert not unknown, "the docs name metrics the daemon does not have: (doc, name)"


def _health_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("`GET /health`") : readme.index("`GET /metrics`")]


async def test_the_readme_documents_every_health_field() -> None:
    rows = re.findall(r"^\| (`[^|]+`) \|", _health_section(), re.MULTILINE)
    documented_fields = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}
    async with (
        running_daemon() as daemon,
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon.http_port}/health") as response,
    ):
        health = await response.json()
    assert documented_fields == set(health), "README's /health table differs from what /health answers"
    home_assistant_row = next(row for row in _health_section().splitlines() if row.startswith("| `home_assistant`"))
    assert set(health["home_assistant"]) | {str(state) for state in State} <= set(
        re.findall(r"`([a-z_]+)`", home_assistant_row)
    ), "the home_assistant row names every field and state"


def _as_written(value: object) -> str:
    """A YAML value as the docs write it: `true`, `0.5`, `INFO`."""
    return value if isinstance(value, str) else json.dumps(value)


def test_the_add_on_docs_list_every_option_with_its_default() -> None:
    options = yaml.safe_load((ROOT / "addon" / "config.yaml").read_text())["options"]
    docs = (ROOT / "addon" / "DOCS.md").read_text()
    table = docs[docs.index("## Options") : docs.index("Every option is the daemon setting")]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", table, re.MULTILINE))
    shown = {name: "empty" if value in ("", []) else f"`{_as_written(value)}`" for name, value in options.items()}
    assert {name: value.strip() for name, value in rows.items()} == shown, "addon/DOCS.md's options table"


def test_protocol_md_names_every_txt_property_of_the_websocket_service() -> None:
    """Clients that find the daemon by zeroconf read these; `scheme` says whether to use wss."""
    ad = Advertisement("test", ("127.0.0.1",), 10301, ("127.0.0.1",), None, ())
    (info,) = service_infos(ad)
    properties = {key.decode(): value.decode() for key, value in info.properties.items() if value is not None}
    assert len(properties) >= 5, "the advertisement still has its TXT properties"
    text = (ROOT / "docs/protocol.md").read_text()
    unnamed = [key for key in properties if f"`{key}`" not in text]
    assert not unnamed, "TXT properties protocol.md does not name"
    per_daemon = {"http_port", "version"}
    wrong = {key: value for key, value in properties.items() if key not in per_daemon and f"`{value}`" not in text}
    assert not wrong, "TXT values protocol.md does not give as they are"


def test_openai_md_maps_turn_detection_as_the_daemon_does() -> None:
    """The Realtime table: each `server_vad` field's setting, and each `semantic_vad` eagerness's two waits."""
    text = (ROOT / "docs/openai.md").read_text()
    mappings = [f"`{field}` → `{setting}`" for field, setting in SERVER_VAD_SETTINGS.items()]
    waits = [f"`{eagerness}` {short} / {long} ms" for eagerness, (short, long) in EAGERNESS.items()]
    assert not [quoted for quoted in mappings + waits if quoted not in text], "docs/openai.md's turn detection table"


def test_wyoming_md_gives_the_sensitivity_scales_and_framing_limits_the_daemon_uses() -> None:
    text = (ROOT / "docs/wyoming.md").read_text()
    quoted = [f"`{name}` {scale:g}x" for name, scale in SENSITIVITY_SCALE.items()]
    quoted += [f"{MAX_HEADER_BYTES // 1024} KiB", f"{MAX_BLOCK_BYTES >> 20} MiB"]
    assert not [words for words in quoted if words not in text], "docs/wyoming.md"


OTHER_PROGRAMS_FLAGS = {
    *("--build-arg", "--entrypoint", "--gpus", "--name", "--network", "--restart", "--ulimit"),
    "--data-binary",
}
"""Flags of the docker commands the docs show (addon/DOCS.md, docs/security.md) and of curl's
(docs/deepgram.md), not satellite-asr's."""


def _cli_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every long flag of `parser` and of its subcommands."""
    flags = set()
    for action in parser._actions:
        flags |= {option for option in action.option_strings if option.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            flags |= set().union(*(_cli_flags(command) for command in action.choices.values()))
    return flags


def test_every_flag_the_docs_quote_is_a_flag_of_satellite_asr() -> None:
    """A renamed flag (`--silence-ms`) would leave every doc that quotes it stale."""
    flags = _cli_flags(build_parser())
    assert "--silence-ms" in flags and "--cafile" in flags and "--wyoming-end" in flags
    quoted = {
        (doc, flag)
        for doc in USER_DOCS
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", (ROOT / doc).read_text())
    }
    unknown = sorted((doc, flag) for doc, flag in quoted if flag not in flags | OTHER_PROGRAMS_FLAGS)
    assert not unknown, "docs quote flags satellite-asr does not have: (doc, flag)"


def test_every_config_file_the_docs_show_loads(tmp_path: Path) -> None:
    blocks = [block for doc in USER_DOCS for block in re.findall(r"```yaml\n(.*?)```", (ROOT / doc).read_text(), re.S)]
    assert blocks, "the docs still show a config file"
    for number, block in enumerate(blocks):
        config = tmp_path / f"{number}.yaml"
        config.write_text(block)
        settings = load_settings(config, environ={})
        # the setting's own advice: an address filling a WebSocket route leaves room for its other requests
        # (the reverse proxy's example raised the routes' cap per address and not this one)
        assert settings.max_http_connections_per_address > settings.max_connections_per_address, block


def _first_column(doc: str, start: str, end: str) -> set[str]:
    """The backticked names in the first column of the table between `start` and `end` in `doc`."""
    text = (ROOT / doc).read_text()
    table = text[text.index(start) : text.index(end, text.index(start))]
    return set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))


def test_the_fields_a_client_may_send_are_the_ones_the_tables_list() -> None:
    """A field added to (or dropped from) a request would otherwise be accepted (or refused) unannounced."""
    config = _first_column("docs/protocol.md", "### `config`", "### Audio")
    assert config == (websocket.CONFIG_FIELDS - {"type", "vad"}) | {f"vad.{name}" for name in websocket.VAD_FIELDS}
    form = _first_column("docs/openai.md", "## REST: /v1/audio/transcriptions", "Any other field is a 400")
    assert form == openai_rest.FIELDS | set(openai_rest.LIST_FIELDS)
    elevenlabs = _first_column("docs/elevenlabs.md", "## The upload API", "Any other field is refused")
    assert elevenlabs == elevenlabs_upload.SINGLE_FIELDS | set(elevenlabs_upload.REPEATED_FIELDS)


REPOSITORY_PATH = re.compile(r"(?<![\w./-])((?:satellite_asr|tests|scripts|docs|addon)/[\w./-]*[\w/])")
"""A path in this repository as the docs quote it: `tests/fixtures/weather.wav`, `scripts/serve`."""


def test_every_repository_path_the_docs_quote_exists() -> None:
    quoted = {(doc, path) for doc in USER_DOCS for path in REPOSITORY_PATH.findall((ROOT / doc).read_text())}
    assert len(quoted) > 30, "the pattern still finds the docs' paths"
    assert not sorted((doc, path) for doc, path in quoted if not (ROOT / path).exists()), "quoted paths that are gone"


def test_no_install_advice_fetches_satellite_asr_from_a_package_index() -> None:
    """satellite-asr is not on a package index (addon/DOCS.md, the Dockerfile): docs/browser.md and the
    microphone's, vLLM's and microVAD's error messages said `pip install 'satellite-asr[mic]'`, which asks
    PyPI for it (no such package there, or someone else's). An extra goes into the checkout's venv."""
    texts = {doc: (ROOT / doc).read_text() for doc in (*USER_DOCS, "docs/benchmarks.md")}
    texts |= {str(path.relative_to(ROOT)): path.read_text() for path in (ROOT / "satellite_asr").rglob("*.py")}
    from_index = re.compile(r"pip install ['\"]?satellite-asr\b")
    assert not sorted(name for name, text in texts.items() if from_index.search(text))


def _fenced_after(doc: str, heading: str) -> str:
    """The first fenced block after `heading` in `doc`, without its fences."""
    text = (ROOT / doc).read_text()
    opening = text.index("```", text.index(heading))
    body = text.index("\n", opening) + 1
    return text[body : text.index("```", body)]


def _arrows(block: str, arrow: str) -> list[str]:
    """The messages of an exchange written `→ …` / `← …`, a message's continuation lines joined to it."""
    messages: list[str] = []
    for line in block.splitlines():
        if line.startswith(("→", "←")):
            messages.append(line)
        elif messages:
            messages[-1] += " " + line.strip()
    return [message[1:].strip() for message in messages if message.startswith(arrow)]


def _timed(final: FinalTranscript) -> tuple[float, float, str]:
    return final.start, final.end, final.text


async def test_the_examples_transcripts_and_times_are_what_the_daemon_gives() -> None:
    """The README's tour, protocol.md's exchange, wyoming.md's round and openai.md's uploads show
    what the daemon sends for the fixtures they name: a live stream is cut as `transcribe` cuts the
    file (a stream's turn verdicts come during the pause), an upload as `transcribe` with `fixed`.
    They showed an older daemon's ends and words (a final at 2.25 s that the daemon ends at 2.05)."""
    async with OfflineTranscriber(daemon_settings()) as transcriber:
        commands = await transcriber.transcribe(FIXTURES / "three_commands.wav")
        (weather,) = await transcriber.transcribe(FIXTURES / "weather.wav")
    async with OfflineTranscriber(daemon_settings(turn_detection="fixed")) as transcriber:
        uploaded = await transcriber.transcribe(FIXTURES / "three_commands.wav")

    readme = (ROOT / "README.md").read_text()
    tour_output = readme[readme.index("## A 30-second tour") : readme.index("Partials appear")]
    tour = re.findall(r"^\[\s*([\d.]+) -\s*([\d.]+)\] (.+)$", tour_output, re.M)
    assert [(float(start), float(end), text) for start, end, text in tour] == [
        (round(start, 2), round(end, 2), text) for start, end, text in map(_timed, commands)
    ], "README.md's stream output"

    exchange = _arrows(_fenced_after("docs/protocol.md", "## Example exchange"), "←")
    sent = [json.loads(message) for message in exchange if message.startswith("{")]
    starts = [event["start"] for event in sent if event.get("type") == "speech_start"]
    finals = [event for event in sent if event.get("type") == "final"]
    assert starts == [final.start for final in commands[:2]], "protocol.md's speech_start events"
    first = commands[0]
    assert (finals[0]["start"], finals[0]["end"], finals[0]["text"], finals[0]["endpoint"]) == (
        *_timed(first),
        first.endpoint,
    ), "protocol.md's first final"

    round_ = dict(
        message.split(" ", 1)
        for message in _arrows(_fenced_after("docs/wyoming.md", "## A round"), "←")
        if " {" in message
    )
    heard = {name: json.loads(round_[name].split("  ")[0]) for name in ("voice-started", "voice-stopped", "transcript")}
    assert (heard["voice-started"]["timestamp"], heard["voice-stopped"]["timestamp"], heard["transcript"]["text"]) == (
        round(weather.start * 1000),
        round(weather.end * 1000),
        weather.text,
    ), "wyoming.md's round"

    examples = _fenced_after("docs/openai.md", "### Examples")
    (body,) = [line.removeprefix("# ") for line in examples.splitlines() if line.startswith('# {"text"')]
    assert json.loads(body)["text"] == " ".join(final.text for final in uploaded), "openai.md's json"
    cues = re.findall(r"^# (\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n# (.+)$", examples, re.M)
    shown = [(int(cue[2]) + int(cue[3]) / 1000, int(cue[6]) + int(cue[7]) / 1000, cue[8]) for cue in cues]
    expected = [(round(start, 3), round(end, 3), text) for start, end, text in map(_timed, uploaded)]
    assert len(shown) >= 2 and shown == expected[: len(shown)], "openai.md's srt"


def test_security_md_gives_the_refusal_body_of_elevenlabs_paths() -> None:
    """security.md lists which body a refused key gets on which paths; ElevenLabs' paths get its
    `{"detail": {...}}` body, not the project's `{"type":"error",...}` it says every other path gets."""
    from satellite_asr.access import error_response

    body = json.loads(error_response("/v1/speech-to-text/realtime", 401, "invalid_api_key", "no").text or "")
    assert set(body) == {"detail"} and set(body["detail"]) == {"status", "message"}
    text = " ".join((ROOT / "docs/security.md").read_text().split())
    assert '`{"detail":{"status","message"}}` on `/v1/speech-to-text`' in text


def test_security_md_names_every_websocket_route_max_websocket_connections_caps() -> None:
    """security.md's caps table lists the routes that each take up to `max_websocket_connections`
    (each has a `ConnectionLimit` of its own): every WebSocket route the daemon serves must be among
    them, or an operator sizing the caps misses one."""
    from satellite_asr.server import Daemon

    handlers = {
        path
        for method, path, handler in Daemon(daemon_settings()).routes()
        if method == "GET" and getattr(handler, "__name__", "") == "handle"
    }
    row = next(line for line in (ROOT / "docs/security.md").read_text().splitlines() if "counted per route" in line)
    listed = row.split("each take up to")[0]
    assert len(handlers) >= 6 and sorted(path for path in handlers if f"`{path}`" not in listed) == []


def test_the_readme_names_every_protocol_label_of_the_metrics() -> None:
    """The metrics' `protocol` label takes each API module's `PROTOCOL` (or `..._PROTOCOL`, a module
    serving two APIs: Speechmatics') (and `websocket`, `wyoming`):
    an operator writing a query for a new API's sessions finds its label in the README."""
    labels = {"websocket", "wyoming"}
    for source in (PACKAGE / "protocols").glob("*.py"):
        for node in ast.parse(source.read_text()).body:
            names = [ast.unparse(target) for target in node.targets] if isinstance(node, ast.Assign) else []
            if len(names) == 1 and re.fullmatch(r"([A-Z]+_)?PROTOCOL", names[0]):
                labels |= _literals(node.value)
    readme = (ROOT / "README.md").read_text()
    sentence = readme.split("`protocol` is ", 1)[1].split(":", 1)[0]
    assert len(labels) >= 12 and set(re.findall(r"`([a-z0-9-]+)`", sentence)) == labels


def test_the_docs_name_every_upload_api_that_shares_max_uploads() -> None:
    """Where a doc lists the upload APIs that share `max_uploads`, it lists each of them: an operator
    sizing the cap for one API learns which others take from it."""
    from satellite_asr.server import Daemon

    uploads = set(Daemon(daemon_settings()).upload_apis)
    row = next(line for line in (ROOT / "docs/openai.md").read_text().splitlines() if "`max_uploads` uploads" in line)
    others = row.split("(here, ", 1)[1].split(")", 1)[0]
    assert sorted(path for path in uploads - {openai_rest.TRANSCRIPTIONS_PATH} if f"`POST {path}`" not in others) == []
    lists = {
        doc: re.findall(r"across the upload APIs \(([^)]*)\)", " ".join((ROOT / doc).read_text().split()))
        for doc in USER_DOCS
    }
    counts = {doc: [len(re.split(r", | and ", found)) for found in listed] for doc, listed in lists.items() if listed}
    assert len(counts) >= 2 and all(count == len(uploads) for listed in counts.values() for count in listed), counts


def test_security_md_lists_every_route_the_daemon_serves() -> None:
    """security.md's table of what is exposed, and with which authentication, names each route: an
    operator deciding what to put behind a proxy sees all of them."""
    from satellite_asr.server import Daemon

    doc = (ROOT / "docs/security.md").read_text()
    table = re.sub(r"\{[a-z]+\}", "{}", doc[doc.index("## What is exposed") : doc.index("Whoever can open")])
    routes = {(method, re.sub(r"\{[a-z]+\}", "{}", path)) for method, path, _ in Daemon(daemon_settings()).routes()}
    assert (
        len(routes) >= 18 and sorted(r for r in routes if not re.search(rf"`{r[0]} {re.escape(r[1])}[`:]", table)) == []
    )
