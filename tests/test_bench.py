"""The benchmark's own helpers (the benchmarks themselves are scripts, never timed tests)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from satellite_asr.clients.bench import BenchReport, UtteranceTiming, bench_daemon, load_manifest, speech_segments
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import load_settings
from tests.eval_turns import MANIFEST, SPLITS, TURNS
from tests.helpers import FIXTURES, serving


def test_speech_spans_found_from_energy_are_plain_numbers_for_the_json_report() -> None:
    spans = speech_segments(read_wav(FIXTURES / "three_commands.wav").to_16k_mono())
    assert len(spans) == 3, spans
    assert all(type(value) is float for span in spans for value in span), spans
    assert json.loads(json.dumps(spans)) == [list(span) for span in spans]


def report(endpoints: list[str | None]) -> BenchReport:
    details = [UtteranceTiming("a.wav", i, "text", 0.3, None, endpoint) for i, endpoint in enumerate(endpoints)]
    nan = float("nan")
    return BenchReport(1, len(details), 0, 0, 800, 0.3, 0.9, None, None, nan, nan, None, 0.0, 0.0, details)


def test_the_summary_counts_the_finals_by_why_they_ended() -> None:
    summary = report(["complete", "silence", "complete", "forced"]).summary()
    assert "finals ended by          complete 2, silence 1, forced 1" in summary


def test_a_protocol_that_does_not_say_why_is_not_counted() -> None:
    assert "finals ended by          n/a (the protocol does not say)" in report([None, None]).summary()


def turns_manifest(path: Path) -> Path:
    """A manifest in the turn set's shape with two splits, "dev" and "later" (no WAVs needed to select)."""
    entry = {"text": "set a timer", "voice_start_s": 0.5, "voice_end_s": 1.5}
    entries = {
        "dev_paused_01.wav": entry | {"split": "dev", "category": "paused"},
        "later_complete_01.wav": entry | {"split": "later", "category": "complete"},
        "later_hard_01.wav": entry | {"split": "later", "category": "hard"},
    }
    (path / "manifest.json").write_text(json.dumps(entries))
    return path / "manifest.json"


def test_a_split_added_to_the_manifest_is_selected_by_its_name(tmp_path: Path) -> None:
    manifest = turns_manifest(tmp_path)
    assert [f.name for f in load_manifest(manifest, "later")] == ["later_complete_01.wav", "later_hard_01.wav"]
    assert [f.name for f in load_manifest(manifest, "later", "hard")] == ["later_hard_01.wav"]


def test_every_split_of_the_turn_set_selects_its_own_files() -> None:
    for split in SPLITS:
        files = load_manifest(TURNS / "manifest.json", split)
        assert [f.name for f in files] == [name for name, e in MANIFEST.items() if e["split"] == split], split
        assert all(f.path.is_file() for f in files), split


@pytest.mark.parametrize(
    ("split", "category", "message"),
    [
        ("fresh99", None, "has no split 'fresh99'; it has dev, later"),
        ("later", "loud", "has no category 'loud'; it has paused, complete, hard"),
        ("dev", "hard", "has no file of split 'dev' in category 'hard'"),
    ],
)
def test_a_selection_that_matches_nothing_says_what_the_manifest_has(
    tmp_path: Path, split: str, category: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_manifest(turns_manifest(tmp_path), split, category)


def test_the_bench_command_refuses_an_unknown_split_with_a_code_and_a_sentence(tmp_path: Path) -> None:
    manifest = turns_manifest(tmp_path)
    command = [sys.executable, "-m", "satellite_asr", "bench", "--manifest", str(manifest), "--split", "fresh99"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert result.stderr == f"satellite-asr: {manifest} has no split 'fresh99'; it has dev, later\n"


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--clients", "0"], 2, "satellite-asr bench: error: argument --clients: must be at least 1, got 0\n"),
        (["--rounds", "0"], 2, "satellite-asr bench: error: argument --rounds: must be at least 1, got 0\n"),
        (
            ["--url", "ws://127.0.0.1:9/v1/stream", "--clients", "2"],
            1,
            "satellite-asr: cannot reach ws://127.0.0.1:9/v1/stream: "
            "[Errno 111] Connect call failed ('127.0.0.1', 9)\n",
        ),
        (
            ["--protocol", "wyoming", "--url", "tcp://127.0.0.1:9"],
            1,
            "satellite-asr: cannot reach tcp://127.0.0.1:9: [Errno 111] Connect call failed ('127.0.0.1', 9)\n",
        ),
    ],
)
def test_the_bench_command_says_what_is_wrong_in_one_line(flags: list[str], code: int, message: str) -> None:
    """No clients ran a report of nothing (nan%); a --url with nothing there was a traceback."""
    command = [sys.executable, "-m", "satellite_asr", "bench", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result
    assert result.stderr.endswith(message), result.stderr
    assert "Traceback" not in result.stderr and not result.stdout


@pytest.mark.timeout(60)
async def test_the_in_process_daemon_listens_on_loopback_ports_of_its_own_and_is_not_advertised() -> None:
    """The README's tour runs `bench` while `serve` holds port 10301: the bench's daemon took the
    serve settings (0.0.0.0:10301, zeroconf on) and stopped with "another program listens there"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(None, environ={}, overrides={"http_port": port, "zeroconf_interface": ["127.0.0.1"]})
        async with bench_daemon(settings, None) as daemon:
            assert daemon is not None
            assert daemon.http_port not in (port, 0) and daemon.discovery is None
            assert daemon.wyoming is not None and daemon.wyoming.address.host == "127.0.0.1"


async def test_elevenlabs_partials_of_an_utterance_committed_empty_are_not_the_next_ones() -> None:
    """The realtime API names no utterance, so the bench counts commits: a partial belongs to the
    utterance whose commit comes next. An utterance the daemon commits empty (a cough whose partial
    had words: the empty commit ends the speech the client began) is an utterance too, else its
    partial is taken for the next command's first, and that command's first-partial latency is
    measured from the cough."""
    import asyncio

    import numpy as np
    from aiohttp import WSMsgType, web

    from satellite_asr.clients.bench import _stream_one_elevenlabs

    script = [
        {"message_type": "partial_transcript", "text": "Hm"},
        {"message_type": "committed_transcript", "text": ""},
        {"message_type": "partial_transcript", "text": "Turn on"},
        {"message_type": "committed_transcript", "text": "Turn on the lights."},
        {"message_type": "partial_transcript", "text": "What"},
        {"message_type": "committed_transcript", "text": "What time is it?"},
        {"message_type": "committed_transcript", "text": ""},
    ]

    async def scribe(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"message_type": "session_started", "session_id": "s", "config": {}})
        async for message in ws:
            if message.type == WSMsgType.TEXT and json.loads(message.data).get("commit"):
                for answer in script:
                    await ws.send_json(answer)
        return ws

    app = web.Application()
    app.router.add_get("/v1/speech-to-text/realtime", scribe)
    tone = (0.3 * np.sin(np.arange(6400) * 0.2)).astype(np.float32)
    audio = np.concatenate([tone, np.zeros(16000, np.float32), tone, np.zeros(3200, np.float32)])
    async with serving(app) as port:
        url = f"ws://127.0.0.1:{port}/v1/speech-to-text/realtime"
        _, received = await asyncio.wait_for(_stream_one_elevenlabs(url, audio, 0.0, {}, {}), 30)
    finals = {m["utterance_id"]: m["text"] for _, m in received if m["type"] == "final"}
    partials = [m["utterance_id"] for _, m in received if m["type"] == "partial"]
    first, second = (partials.count(key) for key in finals)
    assert list(finals.values()) == ["Turn on the lights.", "What time is it?"]
    assert (first, second) == (1, 1), received


async def test_gladia_posts_the_session_then_streams_to_the_url_its_answer_names() -> None:
    """Gladia's API takes two steps: the bench's client posts the settings (with the key), then
    streams to the WebSocket URL of the answer, not to the URL it was given; transcripts name
    their utterance, so each partial is timed against its own final."""
    import asyncio

    import numpy as np
    from aiohttp import WSMsgType, web

    from satellite_asr.clients.bench import _stream_one_gladia

    posted: list[tuple[dict[str, object], str | None]] = []
    script = [
        {"type": "transcript", "data": {"id": "a", "is_final": False, "utterance": {"text": "Turn"}}},
        {"type": "transcript", "data": {"id": "a", "is_final": True, "utterance": {"text": "Turn on the lights."}}},
        {"type": "transcript", "data": {"id": "b", "is_final": False, "utterance": {"text": "What"}}},
        {"type": "transcript", "data": {"id": "b", "is_final": True, "utterance": {"text": "What time is it?"}}},
    ]

    async def create(request: web.Request) -> web.Response:
        posted.append((await request.json(), request.headers.get("Authorization")))
        return web.json_response(
            {"id": "s", "created_at": "now", "url": f"ws://{request.host}/session?token=t"}, status=201
        )

    async def session(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT and json.loads(message.data)["type"] == "stop_recording":
                for answer in script:
                    await ws.send_json(answer)
                await ws.close()
        return ws

    app = web.Application()
    app.router.add_post("/v2/live", create)
    app.router.add_get("/session", session)
    tone = (0.3 * np.sin(np.arange(6400) * 0.2)).astype(np.float32)
    async with serving(app) as port:
        url = f"ws://127.0.0.1:{port}/v2/live"
        headers = {"Authorization": "Bearer k"}
        _, received = await asyncio.wait_for(_stream_one_gladia(url, tone, 0.0, {}, headers), 30)
    [(body, key)] = posted
    assert key == "Bearer k" and body["encoding"] == "wav/pcm" and body["sample_rate"] == 16000
    assert [(m["type"], m["utterance_id"]) for _, m in received] == [
        ("partial", "a"),
        ("final", "a"),
        ("partial", "b"),
        ("final", "b"),
    ]
