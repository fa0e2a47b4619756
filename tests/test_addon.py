"""The Home Assistant add-on: what can be checked without Docker or a Supervisor.

The YAML against the add-on format and against the daemon's own settings, the wheel the image
installs (built by scripts/addon-wheel, installed by the Dockerfile's own shell command), the run
script's command line, and the run script for real: it starts the daemon, answers the health
check, and registers discovery with a stand-in Supervisor on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from satellite_asr.cli import build_parser
from satellite_asr.config import ENGINES, LOG_LEVELS, Settings, load_settings, setting_fields
from satellite_asr.protocols.wyoming import ABORT_GRACE_S
from satellite_asr.server import HANDLER_GRACE_S
from tests.helpers import free_port, running_daemon
from tests.home_assistant_double import EXPOSED_NAMES, HOME, HomeAssistantDouble

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parent.parent
ADDON = ROOT / "addon"
ARCHES = {"aarch64", "amd64", "armhf", "armv7", "i386"}


def load_yaml(name: str) -> Any:
    return yaml.safe_load((ADDON / name).read_text())


def run_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("addon_run", ADDON / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_from_command(command: list[str]) -> Settings:
    """The settings `satellite-asr serve` ends up with for this command line (CLI parsing included)."""
    assert command[:2] == ["satellite-asr", "serve"]
    args = build_parser().parse_args(command[1:])
    return load_settings(args.config, environ={}, overrides={f.name: getattr(args, f.name) for f in setting_fields()})


# --- the YAML ------------------------------------------------------------------------------------


def test_config_yaml_has_what_the_add_on_format_requires() -> None:
    config = load_yaml("config.yaml")
    for key in ("name", "version", "slug", "description", "arch"):
        assert config[key], key
    assert re.fullmatch(r"[a-z0-9_]+", config["slug"])
    assert set(config["arch"]) <= ARCHES and "amd64" in config["arch"]
    assert config["discovery"] == ["wyoming"]
    assert config["ports"] == {"10300/tcp": 10300, "10301/tcp": 10301}
    assert set(config["ports_description"]) == set(config["ports"])
    assert set(config["options"]) == set(config["schema"])
    assert config["startup"] in {"initialize", "system", "services", "application", "once"}


def test_the_supervisor_waits_for_the_daemon_to_shut_down() -> None:
    """The Supervisor kills an add-on still running `timeout` seconds after SIGTERM (default 10).
    The daemon takes up to shutdown_timeout_s to send pending finals and close connections, then
    the grace periods of cut connections and handlers, then frees the model: room is left for that."""
    timeout = load_yaml("config.yaml")["timeout"]
    assert 10 <= timeout <= 300, "the Supervisor's bounds"
    graceful = Settings().shutdown_timeout_s + HANDLER_GRACE_S + ABORT_GRACE_S
    assert timeout >= graceful + 10


def test_versions_are_in_step_with_the_package() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert load_yaml("config.yaml")["version"] == version
    assert load_yaml("build.yaml")["args"]["SATELLITE_ASR_VERSION"] == version


def test_build_yaml_names_a_base_image_for_every_arch() -> None:
    build = load_yaml("build.yaml")
    assert set(build["build_from"]) == set(load_yaml("config.yaml")["arch"])


def test_schema_allows_what_the_daemon_allows_and_defaults_agree() -> None:
    config = load_yaml("config.yaml")
    fields = {f.name: f for f in setting_fields()}
    for name, rule in config["schema"].items():
        field = fields[name]
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        assert config["options"][name] == default, f"{name}: the add-on's default differs from the daemon's"
        if isinstance(rule, list):
            assert rule in (["url"], ["str"]) and isinstance(field.default, tuple), name
        elif rule == "bool":
            assert isinstance(field.default, bool), name
        elif match := re.fullmatch(r"list\((.*)\)", rule):
            offered = tuple(match.group(1).split("|"))
            assert set(offered) <= set(field.metadata["choices"]) and len(set(offered)) == len(offered), name
        elif match := re.fullmatch(r"(int|float)\(([^,]*),([^)]*)\)", rule):
            assert type(field.default).__name__ == match.group(1), name
            assert float(match.group(2)) == field.metadata["minimum"], name
            assert float(match.group(3)) == field.metadata["maximum"], name
        else:
            assert rule in ("str?", "password?") and isinstance(field.default, str), name
    # the add-on's image has no vLLM (nor a GPU): qwen3-vllm could never start there
    assert config["schema"]["engine"] == f"list({'|'.join(e for e in ENGINES if e != 'qwen3-vllm')})"
    assert "SATELLITE_ASR_EXTRAS" not in load_yaml("build.yaml")["args"]
    assert re.search(r'^ARG SATELLITE_ASR_EXTRAS=""$', (ADDON / "Dockerfile").read_text(), re.MULTILINE)
    assert config["schema"]["log_level"] == f"list({'|'.join(LOG_LEVELS)})"
    # manual turn detection would leave Home Assistant's rounds unended: the add-on does not offer it
    assert config["schema"]["turn_detection"] == "list(adaptive|fixed)"


def test_translations_name_every_option_and_port() -> None:
    config, english = load_yaml("config.yaml"), load_yaml("translations/en.yaml")
    assert set(english["configuration"]) == set(config["options"])
    assert all(entry["name"] and entry["description"] for entry in english["configuration"].values())
    assert set(english["network"]) == set(config["ports"])


def test_dockerfile_runs_the_script_and_checks_health_with_describe() -> None:
    dockerfile = (ADDON / "Dockerfile").read_text()
    assert "COPY run.py /usr/local/bin/satellite-asr-addon" in dockerfile
    assert re.search(
        r'HEALTHCHECK .*\n?.*CMD \["python3", "/usr/local/bin/satellite-asr-addon", "--healthcheck"\]', dockerfile
    )
    assert 'ENTRYPOINT ["python3", "/usr/local/bin/satellite-asr-addon"]' in dockerfile


def test_docs_cover_the_gpu_deployment() -> None:
    docs = (ADDON / "DOCS.md").read_text()
    for words in ("CUDA", "GPU", "zeroconf", "--gpus all", "qwen3-vllm", "_wyoming._tcp"):
        assert words in docs, words


# --- the wheel the image installs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def addon_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel scripts/addon-wheel builds, into a folder that holds an older one beforehand."""
    wheels = tmp_path_factory.mktemp("wheels")
    (wheels / "satellite_asr-0.0.1-py3-none-any.whl").write_bytes(b"stale")
    # PIP_NO_BUILD_ISOLATION=0 means --no-build-isolation: the venv's setuptools builds it, which
    # spares the test pip's fresh build environment (most of the script's run time). VENV names
    # the venv running the tests, as scripts/test gets it (`VENV=/some/dir scripts/test`).
    env = {**os.environ, "PIP_NO_BUILD_ISOLATION": "0", "VENV": sys.prefix}
    subprocess.run([ROOT / "scripts" / "addon-wheel", wheels], env=env, check=True, timeout=120)
    (wheel,) = wheels.glob("*.whl")
    return wheel


def test_addon_wheel_script_builds_this_version_with_the_web_page(addon_wheel: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert addon_wheel.name == f"satellite_asr-{version}-py3-none-any.whl", "the stale wheel is gone"
    with zipfile.ZipFile(addon_wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"satellite_asr-{version}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"satellite_asr-{version}.dist-info/entry_points.txt").decode()
    package = {path.relative_to(ROOT).as_posix() for path in (ROOT / "satellite_asr").rglob("*.py")}
    assert package <= names and "satellite_asr/web/index.html" in names
    assert not [name for name in names if "__pycache__" in name]
    assert f"Version: {version}\n" in metadata and "Provides-Extra: vllm\n" in metadata
    assert "satellite-asr = satellite_asr.cli:main" in entry_points


def dockerfile_install_command() -> str:
    """The shell command of the RUN instruction after `COPY wheels/ /wheels/`, as /bin/sh gets it."""
    match = re.search(r"^COPY wheels/ /wheels/\nRUN ((?:.*\\\n)*.*)$", (ADDON / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile copies wheels/ and installs from it"
    return match.group(1)


def run_install_command(wheels: Path, extras: str) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's install command on `wheels` with build.yaml's arguments; pip only reports."""
    pip = f'pip() {{ {shlex.quote(sys.executable)} -m pip "$@" --dry-run --no-deps --no-index --quiet --report -; }}'
    args = {name: str(value) for name, value in load_yaml("build.yaml")["args"].items()}
    command = dockerfile_install_command().replace("/wheels", str(wheels))
    return subprocess.run(
        ["/bin/sh", "-c", f"{pip}\n{command}"],
        env={**os.environ, **args, "SATELLITE_ASR_EXTRAS": extras},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("extras", ["", "vllm"])
def test_dockerfile_installs_the_wheel_by_path(addon_wheel: Path, extras: str) -> None:
    result = run_install_command(addon_wheel.parent, extras)
    assert result.returncode == 0, result.stderr
    (install,) = json.loads(result.stdout)["install"]
    assert install["download_info"]["url"] == addon_wheel.as_uri()
    assert install["metadata"]["version"] == load_yaml("build.yaml")["args"]["SATELLITE_ASR_VERSION"]
    assert install.get("requested_extras", []) == ([extras] if extras else [])


def test_dockerfile_says_how_to_build_a_missing_wheel(tmp_path: Path) -> None:
    result = run_install_command(tmp_path, "")
    assert result.returncode == 1 and result.stdout == ""
    version = load_yaml("build.yaml")["args"]["SATELLITE_ASR_VERSION"]
    assert f"no satellite_asr-{version} wheel" in result.stderr and "Run scripts/addon-wheel" in result.stderr


def test_the_wheels_folder_is_committed_but_its_wheels_are_not() -> None:
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", path], timeout=30).returncode == 0

    assert (ADDON / "wheels").is_dir() and not ignored("addon/wheels/README.md"), "COPY wheels/ needs the folder"
    assert ignored("addon/wheels/satellite_asr-0.1.0-py3-none-any.whl")


# --- options -> command line -----------------------------------------------------------------------


def test_every_default_option_is_a_serve_flag_with_its_value() -> None:
    options = load_yaml("config.yaml")["options"]
    command = run_script().serve_command(options, host="0.0.0.0", wyoming_port=10300, http_port=10301)
    settings = settings_from_command(command)
    for name, value in options.items():
        expected = tuple(value) if isinstance(value, list) else value
        if name == "allowed_hosts":
            expected = ("homeassistant.local", "homeassistant")
        assert getattr(settings, name) == (expected if value != "" else getattr(Settings(), name)), name
    assert settings.zeroconf is False and settings.wyoming_uri == "tcp://0.0.0.0:10300"
    assert settings.http_port == 10301


def printed_command(options: dict[str, Any], directory: Path) -> str:
    """The daemon's command line run.py builds from `options` (written as the Supervisor's options.json)."""
    path = directory / "options.json"
    path.write_text(json.dumps(options))
    command = [sys.executable, str(ADDON / "run.py"), "--options", str(path), "--print-command"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


def test_sample_options_json_gives_the_expected_command_line(tmp_path: Path) -> None:
    options = {
        "engine": "whisper",
        "model": "",
        "remote_urls": ["http://10.1.2.3:8000", "http://10.1.2.4:8000"],
        "remote_api_key": "not-on-the-command-line",
        "language": "en",
        "context": "Kitchen, Living Room",
        "vad_threshold": 0.6,
        "min_speech_ms": 250,
        "turn_detection": "fixed",
        "min_silence_ms": 150,
        "silence_ms": 500,
        "speech_pad_ms": 200,
        "household_names": False,
        "ha_names_limit": 40,
        "log_level": "DEBUG",
    }
    result = printed_command(options, tmp_path)
    assert result == (
        "satellite-asr serve --host 0.0.0.0 --http-port 10301 --wyoming-uri tcp://0.0.0.0:10300 --no-zeroconf"
        " --engine=whisper --remote-urls=http://10.1.2.3:8000 --remote-urls=http://10.1.2.4:8000"
        " --language=en '--context=Kitchen, Living Room' --vad-threshold=0.6"
        " --min-speech-ms=250 --turn-detection=fixed --min-silence-ms=150 --silence-ms=500 --speech-pad-ms=200"
        " --no-household-names --ha-names-limit=40 --log-level=DEBUG"
        " --allowed-hosts=homeassistant.local --allowed-hosts=homeassistant\n"
    )
    settings = settings_from_command(shlex.split(result))
    assert (settings.engine, settings.language, settings.context) == ("whisper", "en", "Kitchen, Living Room")
    assert (settings.vad_threshold, settings.min_speech_ms, settings.silence_ms) == (0.6, 250, 500)
    assert (settings.turn_detection, settings.min_silence_ms) == ("fixed", 150)
    assert (settings.speech_pad_ms, settings.log_level, settings.model) == (200, "DEBUG", "")
    assert (settings.household_names, settings.ha_names_limit) == (False, 40)
    assert settings.remote_urls == ("http://10.1.2.3:8000", "http://10.1.2.4:8000")
    secrets = run_script().secret_environment(options, None)
    assert secrets == {"SATELLITE_ASR_REMOTE_API_KEY": "not-on-the-command-line"}
    assert load_settings(None, environ=secrets).remote_api_key == "not-on-the-command-line"


def test_option_values_that_start_with_a_dash_reach_the_daemon(tmp_path: Path) -> None:
    """`--context -Marigold` was two arguments, and the daemon took -Marigold for a flag and refused to start."""
    options = {"context": "-Marigold, -ish", "allowed_hosts": ["-x"], "language": "-"}  # a list option too
    settings = settings_from_command(shlex.split(printed_command(options, tmp_path)))
    assert (settings.context, settings.allowed_hosts[:1], settings.language) == ("-Marigold, -ish", ("-x",), "-")


def test_the_supervisor_token_reaches_the_daemon_as_its_home_assistant_token_in_the_environment() -> None:
    """`homeassistant_api: true` gives the add-on the token; the daemon reads names through the proxy."""
    assert load_yaml("config.yaml")["homeassistant_api"] is True
    script = run_script()
    options = load_yaml("config.yaml")["options"]
    secrets = script.secret_environment(options, "supervisor-token-7d1e")
    assert secrets == {
        "SATELLITE_ASR_HA_URL": "http://supervisor/core",
        "SATELLITE_ASR_HA_TOKEN": "supervisor-token-7d1e",
    }
    command = script.serve_command(options, host="0.0.0.0", wyoming_port=10300, http_port=10301)
    assert not [arg for arg in command if "token" in arg or "supervisor" in arg], "nothing of it on the command line"
    settings = load_settings(None, environ=secrets)
    assert (settings.ha_url, settings.home_assistant_token()) == ("http://supervisor/core", "supervisor-token-7d1e")
    assert settings.household_names and "supervisor-token-7d1e" not in repr(settings)


# --- the run script for real -------------------------------------------------------------------------


async def healthcheck(port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ADDON / "run.py"), "--healthcheck", "--wyoming-port", str(port)
    )
    return await process.wait()


async def test_healthcheck_passes_when_describe_is_answered_and_fails_otherwise() -> None:
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0") as daemon:
        assert daemon.wyoming_port is not None
        assert await healthcheck(daemon.wyoming_port) == 0
    assert await healthcheck(free_port()) == 1


async def home_assistant_health(http_port: int, state: str) -> dict[str, Any]:
    """The daemon's `/health` `home_assistant` object, once it is in `state` (polled: another process)."""
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{http_port}/health") as response:
                    health: dict[str, Any] = (await response.json())["home_assistant"]
                    if health["state"] == state:
                        return health
            await asyncio.sleep(0.2)


def start_run_script(
    options: dict[str, Any], tmp_path: Path, **env: str
) -> contextlib.AbstractAsyncContextManager[tuple[int, int]]:
    """run.py with these options on loopback, as the Supervisor starts it: (http_port, wyoming_port)
    once the daemon's HTTP server answers; SIGTERM on exit."""

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[tuple[int, int]]:
        path = tmp_path / "options.json"
        path.write_text(json.dumps(options))
        http_port, wyoming_port = free_port(), free_port()
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, str(ADDON / "run.py"), "--options", str(path), "--host", "127.0.0.1"),
            *("--wyoming-port", str(wyoming_port), "--http-port", str(http_port)),
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        )
        try:
            async with aiohttp.ClientSession() as http:
                while True:
                    with contextlib.suppress(aiohttp.ClientConnectionError):
                        async with http.get(f"http://127.0.0.1:{http_port}/health"):
                            break
                    assert process.returncode is None, "the daemon stopped"
                    await asyncio.sleep(0.2)
            yield http_port, wyoming_port
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)

    return running()


async def status_by_host(http_port: int, host: str, headers: dict[str, str] | None = None) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{http_port}/metrics", headers={"Host": host, **(headers or {})}) as response,
    ):
        return response.status


async def test_clients_may_reach_the_add_on_by_home_assistants_names_and_the_listed_ones(tmp_path: Path) -> None:
    """The daemon inside the add-on knows only its container's names: Home Assistant's host names,
    by which browsers and satellites reach port 10301, were refused (403 host_not_allowed)."""
    async with start_run_script({"allowed_hosts": ["asr.lan"]}, tmp_path) as (http_port, _):
        for host in ("homeassistant.local", "homeassistant", "asr.lan", "127.0.0.1"):
            assert await status_by_host(http_port, f"{host}:{http_port}") == 200, host
        assert await status_by_host(http_port, f"evil.example:{http_port}") == 403


async def test_an_api_key_option_is_required_of_clients_and_kept_off_the_command_line(tmp_path: Path) -> None:
    key = "add-on-key-5e0f"
    options = {"api_key": key, "log_level": "INFO"}
    command = run_script().serve_command(options, host="0.0.0.0", wyoming_port=10300, http_port=10301)
    assert not [arg for arg in command if key in arg]
    async with start_run_script(options, tmp_path) as (http_port, _):
        assert await status_by_host(http_port, f"asr.example:{http_port}") == 401
        bearer = {"Authorization": f"Bearer {key}"}
        assert await status_by_host(http_port, f"asr.example:{http_port}", bearer) == 200


async def test_run_script_starts_the_daemon_and_registers_discovery(tmp_path: Path) -> None:
    """Registered once `describe` answers, and again when the Supervisor was busy the first time;
    the household names are read through the Supervisor's Home Assistant proxy with its token."""
    received: list[tuple[str, Any]] = []
    describe_answered: list[bool] = []
    arrived = asyncio.Event()

    async def discovery(request: web.Request) -> web.Response:
        received.append((request.headers["Authorization"], await request.json()))
        describe_answered.append(await healthcheck(wyoming_port) == 0)
        if len(received) == 1:
            return web.json_response({"result": "error", "message": "busy"}, status=503)
        arrived.set()
        return web.json_response({"result": "ok", "data": {"uuid": "abc"}})

    home_assistant = HomeAssistantDouble(copy.deepcopy(HOME), "secret-token")
    app = web.Application()
    app.router.add_post("/discovery", discovery)
    app.router.add_get("/core/websocket", home_assistant.websocket)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    supervisor = web.TCPSite(runner, "127.0.0.1", 0)
    await supervisor.start()
    supervisor_port = runner.addresses[0][1]

    options = tmp_path / "options.json"
    options.write_text(json.dumps({"engine": "whisper", "silence_ms": 600, "log_level": "INFO"}))
    wyoming_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SUPERVISOR_TOKEN": "secret-token",
        "SUPERVISOR_URL": f"http://127.0.0.1:{supervisor_port}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ADDON / "run.py"),
        "--options",
        str(options),
        "--host",
        "127.0.0.1",
        "--wyoming-port",
        str(wyoming_port),
        "--http-port",
        str(http_port),
        env=env,
    )
    try:
        await asyncio.wait_for(arrived.wait(), 90)
        expected = (
            "Bearer secret-token",
            {"service": "wyoming", "config": {"uri": f"tcp://{socket.gethostname()}:{wyoming_port}"}},
        )
        assert received == [expected, expected]
        assert describe_answered == [True, True]
        assert await healthcheck(wyoming_port) == 0
        names = await asyncio.wait_for(home_assistant_health(http_port, "loaded"), 60)
        assert names["names"] == EXPOSED_NAMES and names["last_error"] is None
        assert "secret-token" not in json.dumps(names)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
        await runner.cleanup()
    assert code == 0, "SIGTERM reaches the daemon, which shuts down cleanly"
    assert await healthcheck(wyoming_port) == 1, "the daemon is gone with the script"


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read the add-on's options {path} (No such file or directory): this entry point runs under"),
        ("{", "{path} is not a JSON object of add-on options (Expecting property name"),
        ("[]", "{path} is not a JSON object of add-on options"),
        (b'{"model": "\xff"}', "{path} is not a JSON object of add-on options ('utf-8' codec can't decode"),
    ],
)
def test_the_entry_point_without_usable_options_says_so_without_a_traceback(
    tmp_path: Path, content: str | bytes | None, said: str
) -> None:
    """The image started by hand without `--entrypoint satellite-asr` (DOCS.md's GPU machine) has no
    /data/options.json: run.py ended in a FileNotFoundError traceback (a file not in UTF-8: a
    UnicodeDecodeError one)."""
    path = tmp_path / "options.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    command = [sys.executable, str(ADDON / "run.py"), "--options", str(path), "--print-command"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("satellite-asr-addon: " + said.format(path=path)), result.stderr
    assert "Traceback" not in result.stderr
