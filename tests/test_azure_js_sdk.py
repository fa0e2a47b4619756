"""Azure AI Speech's real-time protocol with Microsoft's JavaScript Speech SDK
(`microsoft-cognitiveservices-speech-sdk`, pinned in tests/node/package-lock.json) in Node, against
the real daemon (real Silero, real tiny.en): tests/node/recognize.js recognizes a fixture and prints
the SDK's results. In Node the SDK connects with the `ws` package and sends the key both as the
`Ocp-Apim-Subscription-Key` header and in the query; with a global WebSocket (a browser's, Node's
`--experimental-websocket`) it can send no header, so the query alone carries the key."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, FIXTURES, normalise, running_daemon, same_words, tool_missing
from tests.test_azure import connections_counted

pytestmark = pytest.mark.timeout(180)

KEY = "azure-js-test-key"
NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "recognize.js"
CONVERSATION = "/speech/recognition/conversation/cognitiveservices/v1"
UNIVERSAL = "/stt/speech/universal/v2"


def node() -> str:
    """Node, with the SDK that scripts/bootstrap.sh installs."""
    found = shutil.which("node")
    if found is None:
        tool_missing("Node is not installed: the JavaScript Speech SDK runs in it")
    if not (NODE_DIR / "node_modules" / "microsoft-cognitiveservices-speech-sdk").is_dir():
        tool_missing("the JavaScript Speech SDK is not installed: run scripts/bootstrap.sh test (npm ci in tests/node)")
    return found


def host(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}"


async def recognize(
    mode: str, url: str, fixture: str, key: str = KEY, how: str = "host", browser: bool = False
) -> dict[str, Any]:
    """recognize.js's results: `mode` once or continuous, `how` the SpeechConfig (fromHost or
    fromEndpoint); `browser`, Node's own WebSocket, which sends no headers, as in a browser."""
    flags = ["--experimental-websocket"] if browser else []
    command = [node(), *flags, str(SCRIPT), mode, url, key, str(FIXTURES / fixture), how]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The cancellations that are errors: a file's end is a cancellation too (`EndOfStream`)."""
    return [c for c in result["cancelled"] if c["reason"] == "Error"]


async def test_recognize_once_by_host_returns_the_first_command() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        result = await recognize("once", host(daemon), "lights_on.wav")
    assert result["reason"] == "RecognizedSpeech", result
    assert normalise(result["finals"][0]) == normalise(EXPECTED["lights_on.wav"][0])
    assert result["path"] == "/speech/recognition/interactive/cognitiveservices/v1"


async def test_recognize_once_twice_on_one_recognizer_on_one_connection() -> None:
    """A second `recognizeOnce` on the same recognizer is a new turn on the connection the first
    used (the SDK sends telemetry after turn.end, then the next turn's speech.context and audio):
    the first command twice (the SDK reads a file input from its start for each `recognizeOnce`),
    one connection."""
    async with running_daemon(api_key=KEY) as daemon:
        opened = connections_counted(daemon)
        result = await recognize("twice", host(daemon), "three_commands.wav")
    assert result["reason"] == "RecognizedSpeech" and not result["cancelled"], result
    assert same_words([EXPECTED["three_commands.wav"][0]] * 2, result["finals"]), result
    assert len(opened) == 1, opened


async def test_continuous_by_host_gives_each_command_as_a_phrase() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        result = await recognize("continuous", host(daemon), "three_commands.wav")
    assert not errors(result), result
    assert same_words(EXPECTED["three_commands.wav"], result["finals"]) and result["partials"]
    assert result["path"] == CONVERSATION


async def test_a_browsers_key_in_the_query_alone() -> None:
    """Node's own WebSocket, like a browser's, sends no headers: the key is `?Ocp-Apim-Subscription-Key=`."""
    async with running_daemon(api_key=KEY) as daemon:
        result = await recognize("once", host(daemon), "lights_on.wav", browser=True)
    assert result["reason"] == "RecognizedSpeech", result
    assert normalise(result["finals"][0]) == normalise(EXPECTED["lights_on.wav"][0])


async def test_the_universal_endpoint_in_both_modes() -> None:
    """`fromEndpoint` with `/stt/speech/universal/v2`, Azure's current endpoint form: the mode comes
    in `speech.context`, the language and format in the query."""
    async with running_daemon(api_key=KEY) as daemon:
        endpoint = host(daemon) + UNIVERSAL
        continuous = await recognize("continuous", endpoint, "three_commands.wav", how="endpoint")
        once = await recognize("once", endpoint, "three_commands.wav", how="endpoint")
    assert not errors(continuous), continuous
    assert same_words(EXPECTED["three_commands.wav"], continuous["finals"])
    assert once["reason"] == "RecognizedSpeech", once
    assert normalise(once["finals"][0]) == normalise(EXPECTED["three_commands.wav"][0])


async def test_a_wrong_key_is_cancelled_as_an_authentication_failure() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        result = await recognize("once", host(daemon), "lights_on.wav", key="not-the-key")
    assert result["reason"] == "Canceled", result
    [cancelled] = result["cancelled"]
    assert cancelled["reason"] == "Error" and cancelled["code"] == "ConnectionFailure", cancelled
    assert "401" in cancelled["details"] and "not-the-key" not in json.dumps(result), cancelled


async def test_a_refused_query_cancels_the_recognition() -> None:
    """The Close 1007 comes right after the upgrade, while the SDK sends its first messages: its
    sentence reaches the SDK's error details only when no send is under way (a failed send is
    reported instead), so the cancellation alone is asserted."""
    async with running_daemon(api_key=KEY) as daemon:
        endpoint = f"{host(daemon)}{CONVERSATION}?punctuation=explicit"
        result = await recognize("continuous", endpoint, "lights_on.wav", how="endpoint")
    assert errors(result) and not result["finals"], result
