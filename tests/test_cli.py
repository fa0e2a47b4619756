"""The command line as a person runs it."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from satellite_asr.audio import MAX_RATE, MIN_RATE
from satellite_asr.cli import TRANSCRIBE_SETTINGS, build_parser
from satellite_asr.clients.transcribe import OfflineTranscriber
from satellite_asr.config import setting_fields
from satellite_asr.engines.factory import qwen_context_tokens
from satellite_asr.engines.qwen3_prompt import Qwen3Decoding
from satellite_asr.recording import TranscriptionFailed
from satellite_asr.vad.turn import TurnVerdict
from tests.doubles import FailsOnAWordEngineDouble, GatedEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    daemon_settings,
    encoded_audio,
    eventually,
    fixture_16k,
    free_port,
    running_daemon,
    same_words,
    serve_on_loopback,
    turn_decisions,
    ws_url,
)

pytestmark = pytest.mark.timeout(180)

CHECKOUT = Path(__file__).resolve().parent.parent

NOT_AUDIO = "not an audio file FFmpeg can read (Invalid data found when processing input)"
"""What `transcribe` says of a file that is not audio (`stream` reads WAV only: "not a PCM WAV file")."""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "satellite_asr", *args], capture_output=True, text=True, timeout=170)


async def cli_with_key(*args: str, key: str | None) -> tuple[int | None, str, str]:
    """`satellite-asr ARGS` with no SATELLITE_ASR_ variable but the API key, if given: exit code, stdout, stderr."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SATELLITE_ASR_")}
    if key is not None:
        env["SATELLITE_ASR_API_KEY"] = key
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "satellite_asr", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 150)
    return process.returncode, stdout.decode(), stderr.decode()


def weather_manifest(tmp_path: Path) -> Path:
    """A bench manifest of one fixture, weather.wav (linked beside it)."""
    manifest = tmp_path / "one.json"
    manifest.write_text(json.dumps({"weather.wav": EXPECTED["weather.wav"]}))
    (tmp_path / "weather.wav").symlink_to(FIXTURES / "weather.wav")
    return manifest


async def bench_one_round(
    manifest: Path, protocol: str, url: str, key: str | None = None
) -> tuple[int | None, str, str]:
    """`satellite-asr bench` of `manifest` over `protocol` against `url`, one round, with `key` if given."""
    flags = ("--protocol", protocol, "--manifest", str(manifest), "--rounds", "1", "--url", url)
    return await cli_with_key("bench", *flags, key=key)


async def bench_refused_for_its_key(manifest: Path, protocol: str, url: str) -> None:
    """`bench` without the key: nothing measured, the upgrade's 401 reported with the daemon's
    sentence and the hint of where the key goes."""
    code, stdout, stderr = await bench_one_round(manifest, protocol, url)
    assert (code, stdout) == (1, ""), stderr
    assert stderr.startswith(f"satellite-asr: {url}: the daemon refused the connection with HTTP 401"), stderr
    assert "this daemon requires an API key" in stderr and "give the key with --api-key" in stderr, stderr


def test_transcribe_help_says_which_files_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    """It said "16-bit PCM WAV files" while the daemon's uploads took any format FFmpeg reads."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "Audio files in any format FFmpeg reads, as /v1/audio/transcriptions takes them" in shown
    assert "with no limit on their length (max_upload_audio_s is the server's)" in shown


def test_transcribe_takes_only_the_settings_that_change_a_local_transcription(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`transcribe --help` listed every server setting (ports, TLS, zeroconf, access, limits, uploads)
    although it runs no server; such a flag is now refused. Its config file may still hold them: one
    file serves both commands, and transcribe leaves the server's keys unused."""
    assert {f.name for f in setting_fields()} > TRANSCRIBE_SETTINGS  # each one a setting, not a typo
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "--help"])
    shown = capsys.readouterr().out
    for used in ("--config", "--engine", "--model", "--whisper-device", "--remote-urls", "--language", "--context"):
        assert used in shown
    for used in ("--ha-url", "--ha-names-limit", "--turn-detection", "--silence-ms", "--max-utterance-s"):
        assert used in shown
    for server in ("--http-port", "--wyoming-uri", "--tls-cert", "--zeroconf", "--api-key", "--max-sessions"):
        assert server not in shown
    for unused in ("--idle-timeout-s", "--max-upload-mb", "--partials", "--partial-interval-ms", "--qwen-fresh-"):
        assert unused not in shown
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["transcribe", "--http-port", "10301", "weather.wav"])
    assert refused.value.code == 2
    assert "error: unrecognized arguments: --http-port" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text("http_port: 10400\nsilence_ms: 600\n")
    result = run_cli("transcribe", "--config", str(config), "--silence-ms", "700", str(FIXTURES / "weather.wav"))
    assert result.returncode == 0, result.stderr
    assert same_words(EXPECTED["weather.wav"], [line.split("\t")[3] for line in result.stdout.splitlines()])


def test_serve_help_says_each_setting_is_also_a_file_key_and_a_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --help` listed 70 flags and said nothing of the config file's keys or the SATELLITE_ASR_
    variables (how the README sets the Home Assistant token), nor which one wins, nor its exit codes."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "a key of the --config file (silence_ms) and an environment variable (SATELLITE_ASR_SILENCE_MS)" in shown
    assert "a flag wins over the environment, which wins over the file" in shown
    assert "Exit status: 2 for a bad setting" in shown


def test_stream_help_says_where_it_connects_and_how_to_send_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stream", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: ws://127.0.0.1:10301/v1/stream; wss:// with TLS)" in shown
    assert "sent as Authorization: Bearer (default: $SATELLITE_ASR_API_KEY)" in shown


def test_transcribe_prints_one_line_per_utterance() -> None:
    result = run_cli("transcribe", str(FIXTURES / "three_commands.wav"), str(FIXTURES / "lights_on.wav"))
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert same_words(EXPECTED["three_commands.wav"] + EXPECTED["lights_on.wav"], [line[3] for line in lines]), lines
    assert all(float(line[1]) < float(line[2]) for line in lines)


async def test_transcribe_says_and_gives_how_an_upload_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """transcribe follows turn_detection (a live stream's cuts: bench compares the streams' finals with
    it); an upload to /v1/audio/transcriptions is always cut with fixed. --help says which flag makes
    them agree, and with it they do."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "--help"])
    assert "--turn-detection fixed gives its segments" in " ".join(capsys.readouterr().out.split())
    wav = FIXTURES / "three_commands.wav"
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        form = aiohttp.FormData({"model": "whisper-1", "response_format": "verbose_json"})
        form.add_field("file", wav.read_bytes(), filename=wav.name, content_type="audio/wav")
        url = f"http://127.0.0.1:{daemon.http_port}/v1/audio/transcriptions"
        async with http.post(url, data=form) as response:
            segments = (await response.json())["segments"]
    uploaded = [(f"{s['start']:.2f}", f"{s['end']:.2f}", s["text"]) for s in segments]
    result = run_cli("transcribe", "--turn-detection", "fixed", str(wav))
    assert result.returncode == 0, result.stderr
    assert [tuple(line.split("\t")[1:]) for line in result.stdout.splitlines()] == uploaded


async def test_transcribe_ends_each_command_where_its_turn_verdict_says() -> None:
    """A live stream's turn verdict comes while the pause goes on. transcribe fed a file as fast as VAD
    read it, so each pause was past the long silence before its speculative decode was done, and the
    verdict came too late: every command waited `silence_ms` (cut as with `fixed`, whatever the README
    said of adaptive, its default), and how long an engine took decided where a file was cut."""
    with turn_decisions() as decisions:
        async with OfflineTranscriber(daemon_settings()) as transcriber:
            finals = await transcriber.transcribe(FIXTURES / "three_commands.wav")
    verdicts = [decision.verdict for decision in decisions.every()]
    endpoints = [final.endpoint for final in finals]
    assert len(verdicts) == len(finals) == 3, (verdicts, finals)
    assert endpoints == ["complete" if verdict is TurnVerdict.COMPLETE else "silence" for verdict in verdicts]
    assert "complete" in endpoints, "the fixture still has a command its verdict ends at the short silence"


async def test_transcribe_cancelled_while_a_turn_verdict_is_awaited_stops_there() -> None:
    """A recording's feed awaits each pause's turn verdict itself (not in a task of its own): a
    cancel that came then (Ctrl-C, or a final whose decode failed, which ends the file's reading) was
    taken as the speculation's and swallowed, so the feed went on through the rest of the file,
    decoding it for nobody, before transcribe stopped (here: the decodes after the cancel)."""
    engine = GatedEngineDouble()
    async with OfflineTranscriber(daemon_settings(), engine) as transcriber:
        task = asyncio.create_task(transcriber.transcribe(FIXTURES / "three_commands.wav"))
        await eventually(lambda: bool(engine.finals))  # the first pause's speculative final, which the feed awaits
        task.cancel()
        engine.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(engine.finals) == 1, f"decoded after the cancel: {engine.finals}"


def test_transcribe_into_a_reader_that_closes_the_output_stops_quietly() -> None:
    """`transcribe ... | head -n 1` ended in a BrokenPipeError traceback; now as `yes | head` does."""
    files = [str(FIXTURES / "three_commands.wav"), str(FIXTURES / "weather.wav")] * 3  # lines to spare
    command = ["bash", "-c", '"$@" | head -n 1; exit "${PIPESTATUS[0]}"', "bash"]
    result = subprocess.run(
        [*command, sys.executable, "-m", "satellite_asr", "transcribe", *files],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")
    assert result.stdout.startswith(files[0]) and len(result.stdout.splitlines()) == 1


async def test_bench_whose_reader_is_gone_stops_quietly_and_does_not_blame_the_daemon(tmp_path: Path) -> None:
    """The report written to a pipe nobody reads any more (`| true` reads nothing) was a
    BrokenPipeError, which a bench with --url reported as 'cannot reach' the daemon."""
    manifest = weather_manifest(tmp_path)
    async with running_daemon() as daemon:
        bench = ["bench", "--protocol", "rest", "--manifest", str(manifest), "--rounds", "1", "--json"]
        url = f"http://127.0.0.1:{daemon.http_port}"
        process = await asyncio.create_subprocess_exec(
            *("bash", "-c", '"$@" | true; exit "${PIPESTATUS[0]}"', "bash"),
            *(sys.executable, "-m", "satellite_asr", *bench, "--url", url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 150)
    assert (process.returncode, stderr.decode()) == (128 + signal.SIGPIPE, "")


def test_ctrl_c_in_transcribe_quits_without_a_traceback() -> None:
    """Ctrl-C (SIGINT) stops it with 130, as a shell expects, not with asyncio's KeyboardInterrupt."""
    files = [str(FIXTURES / "three_commands.wav")] * 20
    process = subprocess.Popen(
        [sys.executable, "-m", "satellite_asr", "transcribe", *files],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, not ignored
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith(files[0])  # transcribing now
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


@pytest.mark.parametrize(
    ("command", "name", "message"),
    [
        ("transcribe", "fixtures.json", NOT_AUDIO),
        ("stream", "fixtures.json", "not a PCM WAV file"),
        ("transcribe", "missing.wav", "cannot read it (No such file or directory)"),
        ("stream", "missing.wav", "cannot read it (No such file or directory)"),
    ],
)
def test_unreadable_files_are_named(command: str, name: str, message: str) -> None:
    """A usage error naming the file; `stream` reads it before connecting, so it does not blame the daemon."""
    result = run_cli(command, str(FIXTURES / name), *(["--url", "ws://127.0.0.1:9/v1/stream"] * (command == "stream")))
    assert result.returncode == 2
    assert f"satellite-asr: {FIXTURES / name}: {message}" in result.stderr
    assert "Traceback" not in result.stderr and "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    ("command", "content", "message"),
    [
        ("transcribe", b"hello\n", NOT_AUDIO),
        ("stream", b"hello\n", "not a PCM WAV file (too short for a WAV header)"),
        ("stream", None, f"its sample rate is 96000 Hz; the daemon takes {MIN_RATE} to {MAX_RATE} Hz"),
    ],
)
def test_a_wav_file_the_daemon_cannot_take_is_named_with_what_is_wrong(
    tmp_path: Path, command: str, content: bytes | None, message: str
) -> None:
    """A file shorter than a WAV header, and a rate outside the stream decoder's range: one sentence
    that names the file, said before `stream` connects (not "not a PCM WAV file ()", not a close
    1008). `transcribe` decodes as uploads are: it resamples a 96 kHz file, and calls text not audio."""
    path = tmp_path / "audio.wav"
    if content is None:
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(96000)
            wav.writeframes(bytes(9600 * 2))
    else:
        path.write_bytes(content)
    result = run_cli(command, str(path), *(["--url", "ws://127.0.0.1:9/v1/stream"] * (command == "stream")))
    assert result.returncode == 2
    assert result.stderr.strip() == f"satellite-asr: {path}: {message}"


async def test_stream_prints_partials_and_finals() -> None:
    async with running_daemon() as daemon:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "satellite_asr",
            "stream",
            str(FIXTURES / "weather.wav"),
            "--url",
            ws_url(daemon),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    finals = [line for line in lines if line.startswith("[")]
    assert same_words(EXPECTED["weather.wav"], [final.split("]", 1)[1] for final in finals]), finals
    assert any(line.startswith("partial: ") for line in lines[: lines.index(finals[0])])


async def test_stream_sends_a_silence_of_zero_for_the_daemon_to_refuse() -> None:
    """`--silence-ms 0` was dropped as if not given, and the stream ran with the daemon's 800 ms.
    With --fast, the audio still in flight when the daemon closes must not cost the client the error
    (it once saw 1006: the daemon closed without waiting for the client's Close)."""
    async with running_daemon() as daemon:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "satellite_asr", "stream", str(FIXTURES / "weather.wav"), "--fast"),
            *("--silence-ms", "0", "--url", ws_url(daemon)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1, (stdout, stderr)
    assert "error invalid_config: vad.silence_ms: must be between 100 and 10000, got 0" in stderr.decode()


def test_stream_says_when_the_daemon_is_unreachable() -> None:
    result = run_cli("stream", str(FIXTURES / "weather.wav"), "--url", "ws://127.0.0.1:9/v1/stream")
    assert result.returncode == 1
    assert "cannot reach ws://127.0.0.1:9/v1/stream" in result.stderr


async def test_stream_to_a_daemon_with_an_api_key_says_what_was_refused_and_takes_the_key() -> None:
    """A refused upgrade is the daemon's code and sentence, not websockets' traceback; the key is
    --api-key or SATELLITE_ASR_API_KEY; a --url of the Realtime route is said to be one at once."""

    async def stream(url: str, *flags: str, key: str | None = None) -> tuple[int | None, str, str]:
        return await cli_with_key("stream", str(FIXTURES / "weather.wav"), "--fast", "--url", url, *flags, key=key)

    async with running_daemon(api_key="kitchen-key") as daemon:
        url = ws_url(daemon)
        code, _, stderr = await stream(url)
        assert code == 1 and "Traceback" not in stderr, stderr
        assert f"satellite-asr: {url}: the daemon refused the connection with HTTP 401: missing_api_key: " in stderr
        assert "give the key with --api-key or SATELLITE_ASR_API_KEY" in stderr
        code, _, stderr = await stream(url, "--api-key", "wrong")
        assert code == 1 and "HTTP 401: invalid_api_key: the API key is not valid" in stderr, stderr
        code, _, stderr = await stream(url, "--api-key", "Bearer kitchen-key")  # as the header is written
        assert code == 1 and "HTTP 401: invalid_api_key: the API key is not valid" in stderr, stderr
        assert stderr.endswith(
            "; give the key alone (no key holds a space): this client sends it as Authorization: Bearer KEY\n"
        ), stderr
        code, stdout, stderr = await stream(url, key="kitchen-key")
        assert code == 0, stderr
        assert same_words(EXPECTED["weather.wav"], [line.split("]", 1)[1] for line in stdout.splitlines()])
        realtime = url.replace("/v1/stream", "/v1/realtime")
        code, _, stderr = await stream(realtime, "--api-key", "kitchen-key")
        assert code == 1 and "Traceback" not in stderr, stderr
        assert f"satellite-asr: {realtime}: this URL speaks OpenAI's Realtime API" in stderr


@pytest.mark.parametrize(
    "protocol",
    ["rest", "websocket", "openai-realtime", "deepgram", "deepgram-flux", "assemblyai", "elevenlabs", "cartesia"],
)
async def test_bench_to_a_daemon_with_an_api_key_says_what_was_refused_and_takes_the_key(
    protocol: str, tmp_path: Path
) -> None:
    """`bench --protocol rest` ended in a RuntimeError traceback, and no protocol could send a key:
    now the api_key (here SATELLITE_ASR_API_KEY) is what the clients send, and a refusal is the
    daemon's code and sentence. The in-process daemon with a key is used with it too."""
    manifest = weather_manifest(tmp_path)

    async def bench(*flags: str, key: str | None = None) -> tuple[int | None, str, str]:
        return await cli_with_key(
            "bench", "--protocol", protocol, "--manifest", str(manifest), "--rounds", "1", *flags, key=key
        )

    paths = {"rest": "", "websocket": "/v1/stream", "openai-realtime": "/v1/realtime", "deepgram": "/v1/listen"}
    others = {"deepgram-flux": "/v2/listen", "assemblyai": "/v3/ws", "elevenlabs": "/v1/speech-to-text/realtime"}
    others["cartesia"] = "/stt/websocket"
    path = {**paths, **others}[protocol]
    what = "upload" if protocol == "rest" else "connection"
    async with running_daemon(api_key="kitchen-key") as daemon:
        scheme = "http" if protocol == "rest" else "ws"
        url = f"{scheme}://127.0.0.1:{daemon.http_port}{path}"
        code, stdout, stderr = await bench("--url", url)
        assert (code, stdout) == (1, ""), stderr
        refused = f"satellite-asr: {url}: the daemon refused the {what} with HTTP 401: missing_api_key: "
        assert stderr.startswith(refused), stderr
        assert stderr.endswith("; give the key with --api-key, --api-key-file or SATELLITE_ASR_API_KEY\n"), stderr
        code, _, stderr = await bench("--url", url, key="wrong")
        assert code == 1 and "HTTP 401: invalid_api_key: the API key is not valid" in stderr, stderr
        code, stdout, stderr = await bench("--url", url, key="kitchen-key")
        assert code == 0 and "WER" in stdout, stderr
    code, stdout, stderr = await bench(key="in-process-key")
    assert code == 0 and "WER" in stdout, stderr


async def test_bench_over_soniox_says_the_streams_401_and_takes_the_key(tmp_path: Path) -> None:
    """Soniox's API refuses a missing key in the stream, not at the upgrade: `bench --protocol
    soniox` reports that error (code and sentence) as the others report a refused upgrade, with the
    same hint, and with the key measures the file."""
    manifest = weather_manifest(tmp_path)
    bench = functools.partial(bench_one_round, manifest, "soniox")
    async with running_daemon(api_key="kitchen-key") as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/transcribe-websocket"
        code, stdout, stderr = await bench(url)
        assert (code, stdout) == (1, ""), stderr
        refused = f"satellite-asr: {url}: the daemon ended the stream with error 401: this daemon requires an API key"
        assert stderr.startswith(refused), stderr
        assert stderr.endswith("; give the key with --api-key, --api-key-file or SATELLITE_ASR_API_KEY\n"), stderr
        code, stdout, stderr = await bench(url, key="kitchen-key")
        assert code == 0 and "WER" in stdout, stderr


async def test_bench_over_meta_says_the_handshakes_401_and_takes_the_key(tmp_path: Path) -> None:
    """Meta's API refuses a missing key in answer to the handshake, not at the upgrade: `bench
    --protocol meta` reports that error (code and sentence) with the key hint, and with the key
    (in the request's headers, which the daemon takes there too) measures the file."""
    manifest = weather_manifest(tmp_path)
    bench = functools.partial(bench_one_round, manifest, "meta")
    async with running_daemon(api_key="kitchen-key") as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/v1/asr/realtime"
        code, stdout, stderr = await bench(url)
        assert (code, stdout) == (1, ""), stderr
        refused = f"satellite-asr: {url}: the daemon sent error missing_api_key: this daemon requires an API key"
        assert stderr.startswith(refused), stderr
        assert stderr.endswith("; give the key with --api-key, --api-key-file or SATELLITE_ASR_API_KEY\n"), stderr
        code, stdout, stderr = await bench(url, key="kitchen-key")
        assert code == 0 and "missing finals: 0" in stdout and "WER" in stdout, stderr


async def test_bench_over_speechmatics_says_the_upgrades_401_and_the_streams_error(tmp_path: Path) -> None:
    """`bench --protocol speechmatics`: a missing key is the upgrade's 401 in Speechmatics' body,
    reported with the key hint; an Error in the stream (a path language not the configuration's)
    is reported by its type and reason; with the key it measures the file."""
    manifest = weather_manifest(tmp_path)
    bench = functools.partial(bench_one_round, manifest, "speechmatics")
    async with running_daemon(api_key="kitchen-key") as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/v2"
        await bench_refused_for_its_key(manifest, "speechmatics", url)
        code, _, stderr = await bench(f"{url}/de", key="kitchen-key")
        assert code == 1 and "error invalid_config: the URL's language 'de'" in stderr, stderr
        code, stdout, stderr = await bench(url, key="kitchen-key")
        assert code == 0 and "WER" in stdout, stderr


@pytest.mark.parametrize(
    ("protocol", "path"),
    [
        ("mistral", "/v1/audio/transcriptions/realtime"),
        ("smallest", "/waves/v1/stt/live"),
        ("xai", "/v1/stt"),
        ("gradium", "/api/speech/asr"),
        ("sarvam", "/speech-to-text/ws"),
        ("sarvam-realtime", "/speech-to-text-realtime/ws"),
        ("zoom", "/v2/aiservices/scribe/live"),
        ("baseten", "/environments/production/websocket"),
        ("simplismart", "/ws/audio"),
        ("fireworks", "/v1/audio/transcriptions/streaming"),
        ("telnyx", "/v2/speech-to-text/transcription"),
        ("inworld", "/stt/v1/transcribe:streamBidirectional"),
    ],
)
async def test_bench_says_the_upgrades_401_and_takes_the_key(tmp_path: Path, protocol: str, path: str) -> None:
    """`bench --protocol mistral`, `smallest`, `xai`, `gradium`, `sarvam`, `sarvam-realtime`, `zoom`, `baseten`,
    `simplismart`, `fireworks`, `telnyx` and `inworld`: a missing key is the upgrade's 401 in the API's own body,
    reported with its sentence and the key hint; with the key it measures the file."""
    manifest = weather_manifest(tmp_path)
    bench = functools.partial(bench_one_round, manifest, protocol)
    async with running_daemon(api_key="kitchen-key") as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}{path}"
        await bench_refused_for_its_key(manifest, protocol, url)
        code, stdout, stderr = await bench(url, key="kitchen-key")
        assert code == 0 and "missing finals: 0" in stdout and "WER" in stdout, stderr


async def test_bench_over_gladia_says_the_posts_401_and_takes_the_key(tmp_path: Path) -> None:
    """Gladia's API takes the key on its POST, which `bench --protocol gladia` makes before the
    WebSocket its answer names: a missing key is that POST's 401, reported with the daemon's
    sentence and the same hint as a refused upgrade; with the key the file is measured."""
    manifest = weather_manifest(tmp_path)
    bench = functools.partial(bench_one_round, manifest, "gladia")
    async with running_daemon(api_key="kitchen-key") as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/v2/live"
        code, stdout, stderr = await bench(url)
        assert (code, stdout) == (1, ""), stderr
        refused = f"satellite-asr: {url}: the daemon refused the session with HTTP 401: error: this daemon requires"
        assert stderr.startswith(refused), stderr
        assert stderr.endswith("; give the key with --api-key, --api-key-file or SATELLITE_ASR_API_KEY\n"), stderr
        code, stdout, stderr = await bench(url, key="kitchen-key")
        assert code == 0 and "WER" in stdout, stderr


async def test_bench_over_azure_says_the_upgrades_401_and_the_streams_close(tmp_path: Path) -> None:
    """`bench --protocol azure`: a missing key is the upgrade's 401 in Azure's body, reported with the
    key hint; the stream's refusal (USP's Close, here for a query parameter) by its code and reason;
    with the key it measures the file."""
    manifest = weather_manifest(tmp_path)
    bench = functools.partial(bench_one_round, manifest, "azure")
    async with running_daemon(api_key="kitchen-key") as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/speech/recognition/conversation/cognitiveservices/v1"
        await bench_refused_for_its_key(manifest, "azure", url)
        code, _, stderr = await bench(f"{url}?format=verbose", key="kitchen-key")
        assert (
            code == 1 and "Close 1007: invalid_query_parameter: format: format must be simple or detailed" in stderr
        ), stderr
        assert "Traceback" not in stderr, stderr
        code, stdout, stderr = await bench(url, key="kitchen-key")
        assert code == 0 and "WER" in stdout, stderr


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:10301/v1/stream"])
def test_stream_refuses_a_url_that_is_not_websocket(url: str) -> None:
    result = run_cli("stream", str(FIXTURES / "weather.wav"), "--url", url)
    assert result.returncode == 2
    assert f"argument --url: {url} isn't a valid URI: scheme isn't ws or wss" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-port", "{taken}"], "http_port: cannot listen on 127.0.0.1:{taken}: another program listens there"),
        (["--host", "10.255.255.1"], "host: cannot listen on 10.255.255.1:0: no interface of this machine has that"),
        (["--host", "nonexistent.invalid"], "host: cannot listen on nonexistent.invalid:0: the name does not resolve"),
        (
            ["--wyoming-uri", "tcp://127.0.0.1:{taken}"],
            "wyoming_uri: cannot listen on tcp://127.0.0.1:{taken}: another",
        ),
        (
            ["--http-port", "{free}", "--wyoming-uri", "tcp://127.0.0.1:{free}"],
            "wyoming_uri and http_port: both ask for port {free}; give each its own",
        ),
        (
            ["--wyoming-uri", "unix:///nonexistent/dir/sock"],
            "wyoming_uri: cannot listen on unix:///nonexistent/dir/sock",
        ),
    ],
)
def test_serve_names_the_setting_when_it_cannot_listen(flags: list[str], message: str) -> None:
    """A message and exit 2, not a traceback; what had started (the HTTP server before a Wyoming
    failure) is stopped, so no socket is left for the interpreter to warn about."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        free = str(free_port())
        loopback = ["--host", "127.0.0.1", "--http-port", "0", "--wyoming-uri", "none", "--no-zeroconf"]
        result = subprocess.run(
            [sys.executable, "-W", "always::ResourceWarning", "-m", "satellite_asr", "serve", *loopback]
            + [flag.format(taken=port, free=free) for flag in flags],
            capture_output=True,
            text=True,
            timeout=170,
        )
    assert result.returncode == 2, result.stderr
    assert f"satellite-asr: configuration error: {message.format(taken=port, free=free)}" in result.stderr
    assert "Traceback" not in result.stderr and "ResourceWarning" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "transcribe"])
def test_a_language_setting_the_model_lacks_is_a_configuration_error(command: str) -> None:
    """`language` is the default every session is decoded in: one tiny.en lacks was taken silently,
    echoed in session_created and finals as if it applied (a multilingual model failed every decode).
    Said once: both commands printed it twice, as the core's log line and as the command's own."""
    said = "language: 'xx' is not one of the languages of bundled:tiny.en (en)"
    if command == "serve":
        result = serve_on_loopback("--language", "xx")
        (logged,) = [line for line in result.stderr.splitlines() if said in line]  # in its log, once
        assert " ERROR " in logged and logged.endswith(f": engine whisper configuration error: {said}")
    else:
        result = run_cli("transcribe", str(FIXTURES / "weather.wav"), "--language", "xx")
        assert f"satellite-asr: configuration error: {said}" in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(said) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_vllm_model_length_too_short_for_the_longest_utterance() -> None:
    """Every decode of a long utterance would fail in vLLM: said at start-up, before any model loads.
    Within the length, the context gets what is left, at most its 1024 tokens."""
    result = serve_on_loopback("--engine", "qwen3-vllm", "--vllm-max-model-len", "1024", "--max-utterance-s", "60")
    assert result.returncode == 2, result.stderr
    assert "vllm_max_model_len (1024) is too short: the longest utterance (max_utterance_s 60) takes 780" in (
        result.stderr
    )
    short = daemon_settings(engine="qwen3-vllm", vllm_max_model_len=1024, qwen_max_new_tokens=16)
    long = daemon_settings(engine="qwen3-vllm", vllm_max_model_len=4096)
    assert qwen_context_tokens(short, Qwen3Decoding()) == 1024 - 390 - 32 - 32
    assert qwen_context_tokens(long, Qwen3Decoding()) == 1024


@pytest.mark.parametrize("command", ["transcribe", "bench"])
@pytest.mark.parametrize(
    ("model", "reason"),
    [("no-such-model", "no model directory at {model}"), ("empty", "Unable to open file 'model.bin' in model")],
)
def test_a_model_that_cannot_load_is_said_in_one_line_by_transcribe_and_bench(
    tmp_path: Path, command: str, model: str, reason: str
) -> None:
    """`transcribe` and `bench`, which load the engine themselves, ended in an EngineError traceback
    (a mistyped model path, a model name offline); then said it twice, as the core's log line above
    their own. A folder that holds no model is said as well as one that is not there."""
    (tmp_path / "empty").mkdir()
    path = tmp_path / model
    args = [str(FIXTURES / "weather.wav")] if command == "transcribe" else ["--rounds", "1"]
    result = run_cli(command, "--model", str(path), *args)
    assert result.returncode == 1, result.stderr
    said = f"cannot load whisper model '{path}': {reason.format(model=path)}"
    assert f"satellite-asr: {said}" in result.stderr
    assert result.stderr.count(said) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_logs_a_model_that_cannot_load_once_and_exits_1(tmp_path: Path) -> None:
    """The daemon's log is where a service's failure is read: the load error is in it, once."""
    result = serve_on_loopback("--model", str(tmp_path))
    assert result.returncode == 1, result.stderr
    said = f"cannot load whisper model '{tmp_path}': Unable to open file 'model.bin' in model '{tmp_path}'"
    (logged,) = [line for line in result.stderr.splitlines() if said in line]
    assert " ERROR " in logged and logged.endswith(f": engine whisper failed to load: {said}")


def test_an_upgrade_answered_with_wrong_headers_is_not_said_as_no_server() -> None:
    """Only an answer that is not HTTP means the wrong port; a server that answered the upgrade
    with a wrong header (a proxy that dropped `Upgrade`) is said as what it did."""
    from websockets.exceptions import InvalidHeader, InvalidMessage

    from satellite_asr.clients.stream_client import handshake_failure

    assert handshake_failure(InvalidHeader("Upgrade", "h2c")) == (
        "the WebSocket upgrade failed: invalid Upgrade header: h2c"
    )
    assert handshake_failure(InvalidMessage("did not receive a valid HTTP response")).startswith(
        "no WebSocket server answered (did not receive a valid HTTP response): use the daemon's HTTP port"
    )


async def test_stream_and_bench_to_a_url_that_is_no_websocket_route_say_where_the_route_is() -> None:
    """The Wyoming port (a common slip: 10300 for 10301), or ws:// to a daemon with TLS, answers no
    HTTP: `stream` and `bench` ended in websockets' InvalidMessage traceback. A page (`/`) answers
    200, which was said as "refused the connection with HTTP 200"."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0") as daemon:
        wyoming = f"ws://127.0.0.1:{daemon.wyoming_port}/v1/stream"
        for command in ("stream", "bench"):
            args = [str(FIXTURES / "weather.wav"), "--fast"] if command == "stream" else ["--rounds", "1"]
            code, stdout, stderr = await cli_with_key(command, *args, "--url", wyoming, key=None)
            assert (code, stdout) == (1, ""), stderr
            assert "Traceback" not in stderr, stderr
            assert stderr.startswith(f"satellite-asr: {wyoming}: no WebSocket server answered ("), stderr
            assert "use the daemon's HTTP port (http_port, 10301 by default" in stderr
        page = f"ws://127.0.0.1:{daemon.http_port}/"
        code, _, stderr = await cli_with_key("stream", str(FIXTURES / "weather.wav"), "--url", page, key=None)
        assert code == 1, stderr
        assert f"satellite-asr: {page}: HTTP 200: this path is not a WebSocket route (the WebSocket protocol " in (
            stderr
        )


def test_transcribe_says_which_file_it_cannot_read_and_transcribes_the_others(tmp_path: Path) -> None:
    """One bad file among several stopped the run there: the files after it were not transcribed."""
    bad = tmp_path / "meeting.flac"
    bad.write_bytes(b"fLaC" + bytes(100))
    result = run_cli("transcribe", str(FIXTURES / "weather.wav"), str(bad), str(FIXTURES / "timer.wav"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"satellite-asr: {bad}: {NOT_AUDIO}"
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == [str(FIXTURES / "weather.wav"), str(FIXTURES / "timer.wav")]
    assert same_words(EXPECTED["weather.wav"], [lines[0][3]]) and same_words(EXPECTED["timer.wav"], [lines[1][3]])


def test_transcribe_says_which_file_the_engine_failed_on_and_goes_on() -> None:
    """A decode that failed midway (here every one: the vLLM server of qwen3-remote does not answer)
    ended transcribe in a TranscriptionFailed traceback at the first file: now each file is named
    with what failed, and the exit status is 1, as when the engine cannot load."""
    url = f"http://127.0.0.1:{free_port()}"
    files = [str(FIXTURES / "weather.wav"), str(FIXTURES / "timer.wav")]
    result = run_cli("transcribe", "--engine", "qwen3-remote", "--remote-urls", url, *files)
    assert result.returncode == 1, result.stderr
    for file in files:
        assert f"satellite-asr: {file}: transcription of utterance 1 failed: no vLLM server answered: {url}" in (
            result.stderr
        )
    assert "Traceback" not in result.stderr and result.stdout == ""


async def test_transcribe_gives_each_final_as_it_is_decoded_and_keeps_them_when_a_later_one_fails() -> None:
    """A decode that fails at the third command (a server gone) lost the file's first two finals: the
    finals were handed over only once the whole file was done. The CLI prints them as they come."""
    engine = FailsOnAWordEngineDouble("garage")
    heard: list[str] = []
    async with OfflineTranscriber(daemon_settings(), engine) as transcriber:
        with pytest.raises(TranscriptionFailed, match="FailsOnAWordEngineDouble"):
            async for final in transcriber.finals(FIXTURES / "three_commands.wav"):
                heard.append(final.text)
    assert same_words(EXPECTED["three_commands.wav"][:2], heard), heard


def test_transcribe_reads_what_an_upload_may_be(tmp_path: Path) -> None:
    """`transcribe meeting.m4a` (docs/openai.md's upload) said "not a PCM WAV file": files are now
    decoded as uploads are. A phone's m4a (AAC, 44.1 kHz) and a browser's Ogg Opus (48 kHz, stereo)."""
    samples = fixture_16k("three_commands.wav")
    m4a, opus = tmp_path / "meeting.m4a", tmp_path / "meeting.opus"
    m4a.write_bytes(encoded_audio(samples, "ipod", "aac", 44100))
    opus.write_bytes(encoded_audio(samples, "ogg", "libopus", 48000, "stereo"))
    result = run_cli("transcribe", str(m4a), str(opus))
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    for path in (m4a, opus):
        texts = [line[3] for line in lines if line[0] == str(path)]
        assert same_words(EXPECTED["three_commands.wav"], texts), (path, lines)


async def test_stream_mixes_a_stereo_file_to_mono_as_transcribe_does(tmp_path: Path) -> None:
    """A 44.1 kHz stereo WAV, what most recorders write: `transcribe` took it, `stream` refused it
    ("the WebSocket protocol takes mono audio"); the client now mixes it down itself. The voice is on
    one channel only, so a client that took the other one, or the first alone, would hear nothing."""
    with wave.open(str(FIXTURES / "weather.wav")) as wav:
        rate, mono = wav.getframerate(), np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    resampled = np.interp(np.arange(0, mono.size, rate / 44100), np.arange(mono.size), mono).astype("<i2")
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(np.stack([np.zeros_like(resampled), resampled], axis=1).tobytes())  # the voice on the right
    async with running_daemon() as daemon:
        code, stdout, stderr = await cli_with_key("stream", str(stereo), "--fast", "--url", ws_url(daemon), key=None)
    assert code == 0, stderr
    assert same_words(EXPECTED["weather.wav"], [line.split("]", 1)[1] for line in stdout.splitlines()]), stdout


@pytest.mark.parametrize("url", ["ws://127.0.0.1:9", "127.0.0.1:9"])
def test_bench_over_wyoming_names_its_url_flag_when_the_url_is_not_tcp(url: str) -> None:
    """It said "configuration error: wyoming_uri: expected ..." (a setting the person had not
    touched) or "--uri must be" (a flag bench does not have)."""
    result = run_cli("bench", "--protocol", "wyoming", "--url", url, "--rounds", "1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"satellite-asr: --url of --protocol wyoming must be tcp://HOST:PORT, got {url!r}"


def test_stream_refuses_a_device_for_a_file() -> None:
    """`--device` beside a file was dropped without a word: the file streamed, the device unused."""
    result = run_cli("stream", str(FIXTURES / "weather.wav"), "--device", "3", "--url", "ws://127.0.0.1:9/v1/stream")
    assert result.returncode == 2
    assert result.stderr == "satellite-asr: --device picks the microphone of --mic; a file is streamed without one\n"


def test_a_model_name_that_cannot_be_downloaded_says_how_to_do_without_the_network(tmp_path: Path) -> None:
    """`--model tiny.en` offline (the name of the model that ships, so a natural guess) printed the Hub's
    own "check your internet connection" text under a ConnectError: now what a name means and the two
    ways without a network. The Hub is told it is offline, with an empty cache, wherever the test runs."""
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "satellite_asr", "transcribe", "--model", "small.en", str(FIXTURES / "weather.wav")],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert (
        "satellite-asr: cannot load whisper model 'small.en': a model name is downloaded "
        "from the Hugging Face Hub on first use, and the Hub cannot be reached (offline?); give a local CTranslate2 "
        "directory instead, or leave model empty for the bundled tiny.en, which needs no network"
    ) in result.stderr
    assert "Traceback" not in result.stderr


async def test_stream_and_bench_with_wss_to_a_daemon_without_tls_say_to_use_ws() -> None:
    """It was "cannot reach wss://…: [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"."""
    async with running_daemon() as daemon:
        url = ws_url(daemon).replace("ws://", "wss://")
        for command in ("stream", "bench"):
            args = [str(FIXTURES / "weather.wav")] if command == "stream" else ["--rounds", "1"]
            code, stdout, stderr = await cli_with_key(command, *args, "--url", url, key=None)
            assert (code, stdout) == (1, ""), stderr
            assert stderr.startswith(f"satellite-asr: {url}: the TLS handshake failed ("), stderr
            assert stderr.endswith("a daemon without tls_cert takes ws:// and http://, not wss:// or https://\n")


def test_a_tls_failure_names_plain_http_only_when_openssl_says_plain_http_answered() -> None:
    """A TLS daemon over its connection cap closes a new connection mid-handshake: that is no
    daemon without TLS, and the hint to use ws:// would send the user the wrong way."""
    from satellite_asr.cli import tls_failure

    cut = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert tls_failure(cut) == f"the TLS handshake failed ({cut})"
    plain = ssl.SSLError(1, "wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert tls_failure(plain).endswith("a daemon without tls_cert takes ws:// and http://, not wss:// or https://")


def test_transcribe_says_when_a_file_has_no_speech(tmp_path: Path) -> None:
    """A silent file printed nothing at all and exited 0: no way to tell it from a run that did nothing."""
    silent = tmp_path / "silent.wav"
    with wave.open(str(silent), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(2 * 16000 * 2))
    result = run_cli("transcribe", str(silent), str(FIXTURES / "weather.wav"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"satellite-asr: {silent}: no speech heard\n"
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(FIXTURES / "weather.wav")]


async def test_bench_finds_its_default_manifest_from_any_directory(tmp_path: Path) -> None:
    """The default manifest was `tests/fixtures/fixtures.json` from the working directory: `bench` run
    anywhere but the checkout's root could not read it."""
    async with running_daemon() as daemon:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "satellite_asr", "bench", "--url", ws_url(daemon), "--rounds", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 150)
    assert process.returncode == 0, stderr.decode()
    assert "WER vs reference" in stdout.decode()


def test_bench_without_the_checkouts_manifest_says_to_give_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed wheel has no tests/: said as such, not as a file that cannot be read."""
    from satellite_asr import cli

    monkeypatch.setattr(cli, "DEFAULT_MANIFEST", tmp_path / "tests" / "fixtures" / "fixtures.json")
    assert cli.main(["bench", "--url", "ws://127.0.0.1:9/v1/stream"]) == 2
    assert capsys.readouterr().err == (
        "satellite-asr: bench's default manifest, tests/fixtures/fixtures.json, is in the satellite-asr checkout "
        "and not beside this installation: give one with --manifest\n"
    )


def test_a_wav_file_cut_off_inside_a_frame_is_read_to_its_last_whole_frame(tmp_path: Path) -> None:
    """A recording cut off mid-frame (a recorder that crashed, a partial copy): `stream` failed with
    numpy's "buffer size must be a multiple of element size" and `transcribe` with "6397 bytes is not
    a whole number of s16le frames", a message without the file's name; both now drop the part frame."""
    from satellite_asr.clients.audio_source import WavSource
    from satellite_asr.clients.wav import read_wav

    whole = tmp_path / "whole.wav"
    with wave.open(str(whole), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.arange(-1600, 1600, dtype="<i2").tobytes())
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:-3])
    assert len(read_wav(cut).pcm) == len(read_wav(whole).pcm) - 4
    assert read_wav(cut).to_16k_mono().size == 1599
    assert len(WavSource(cut).pcm) == 2 * 1599
