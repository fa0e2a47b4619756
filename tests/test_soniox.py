"""Soniox's real-time API (`/transcribe-websocket`) end to end: real daemon, real Silero, real
tiny.en, a raw WebSocket client for every message and for input no SDK would send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.clients.stream_client import handshake_failure
from satellite_asr.protocols import soniox
from satellite_asr.server import Daemon
from tests.doubles import (
    ContextRecordingEngineDouble,
    CrashingEngineDouble,
    FirstFinalGatedEngineDouble,
    FirstUtteranceIsNoiseEngineDouble,
)
from tests.helpers import (
    BINARY_OPCODE,
    EXPECTED,
    PCM_FRAME_BYTES,
    client_frame,
    eventually,
    fixture_16k,
    normalise,
    pcm16,
    read_server_frames_until_close,
    running_daemon,
    same_words,
    websocket_upgrade,
)

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
CONFIG = {"model": "stt-rt-v5", "audio_format": "pcm_s16le", "sample_rate": 16000, "num_channels": 1}
"""What every client sends, at the least, for raw audio."""


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{soniox.PATH}{'?' + query if query else ''}"


def audio(name: str = "three_commands.wav") -> bytes:
    return pcm16(fixture_16k(name), 16000)


async def stream(
    target: str,
    config: dict[str, Any] | str | bytes,
    data: bytes = b"",
    *after: str | bytes,
    headers: dict[str, str] | None = None,
    paced: bool = False,
) -> tuple[Messages, int | None]:
    """The configuration, `data` in 100 ms binary messages (`paced` as a microphone sends it), the
    `after` messages (by default the empty one that ends the audio); every message until the Close."""
    received: Messages = []
    async with websockets.connect(target, additional_headers=headers) as ws:

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosedError):  # a Close after an error has its code
                async for message in ws:
                    received.append(json.loads(message))

        reader = asyncio.create_task(read())
        await ws.send(config if isinstance(config, str | bytes) else json.dumps(config))
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
            if paced:
                await asyncio.sleep(0.1)
        for message in after or (b"",):
            await ws.send(message)
        await reader
    return received, ws.close_code


def tokens(messages: Messages) -> list[dict[str, Any]]:
    return [token for message in messages for token in message.get("tokens", [])]


def final_text(messages: Messages) -> str:
    """The transcript as Soniox's SDK rebuilds it: every final token's text, joined."""
    return "".join(t["text"] for t in tokens(messages) if t["is_final"] and t["text"] not in ("<end>", "<fin>"))


def utterances(messages: Messages, marker: str = "<end>") -> list[str]:
    """The final texts between markers, as LiveKit's and Pipecat's services join them."""
    said, current = [], ""
    for token in tokens(messages):
        if not token["is_final"]:
            continue
        if token["text"] == marker:
            said.append(current.strip())
            current = ""
        else:
            current += token["text"]
    return said


async def test_three_commands_as_livekit_configures_them() -> None:
    """LiveKit's configuration (endpoint detection, language identification, its defaults): each
    command's partials as non-final tokens, its final tokens once, then `<end>`; the tokens joined
    are the transcript; `finished` last, then a normal Close."""
    config = {
        **CONFIG,
        "enable_endpoint_detection": True,
        "language_hints": None,
        "language_hints_strict": False,
        "context": None,
        "enable_speaker_diarization": False,
        "enable_language_identification": True,
        "client_reference_id": None,
        "max_endpoint_delay_ms": 2000,
    }
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), config, audio(), paced=True)
    assert code == 1000
    assert messages[-1]["finished"] is True and messages[-1]["tokens"] == []
    assert all("error_code" not in m for m in messages)
    said = utterances(messages)
    assert same_words(EXPECTED["three_commands.wav"], said), said
    assert normalise(final_text(messages)) == normalise(" ".join(said))
    assert final_text(messages) == " ".join(said)  # one space between utterances, none in front
    non_final = [t for t in tokens(messages) if not t["is_final"]]
    assert non_final and all(t["confidence"] == 0.0 for t in non_final)
    words = [t for t in tokens(messages) if t["is_final"] and t["text"] != "<end>"]
    assert all(t["language"] == "en" and 0 <= t["confidence"] <= 1 for t in words)
    assert any(t["confidence"] > 0 for t in words)  # 0 where the engine does not say (streaming_apis.confidence)
    assert all(0 <= t["start_ms"] < t["end_ms"] <= messages[-1]["total_audio_proc_ms"] for t in words)
    assert messages[-1]["final_audio_proc_ms"] == messages[-1]["total_audio_proc_ms"] > 0  # all final at the end


async def test_without_endpoint_detection_no_end_token_and_no_language() -> None:
    """The SDK's way: the final tokens alone, each utterance's once, no `<end>`; no `language`
    without language identification."""
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), CONFIG, audio())
    assert all(t["text"] not in ("<end>", "<fin>") for t in tokens(messages))
    assert all("language" not in t for t in tokens(messages))
    text = final_text(messages)
    assert same_words([" ".join(EXPECTED["three_commands.wav"])], [text]), text


async def test_finalize_ends_the_utterance_now_with_fin_once() -> None:
    """`finalize` midway through a command: its final tokens come at once, with `<fin>` after them
    in place of `<end>`, exactly once; a second `finalize` with nothing in progress gets `<fin>` alone."""
    data = audio("lights_on.wav")
    finalize = json.dumps({"type": "finalize"})
    config = {**CONFIG, "enable_endpoint_detection": True}
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), config, data[: len(data) * 3 // 4], finalize, finalize, b"")
    markers = [t["text"] for t in tokens(messages) if t["text"] in ("<end>", "<fin>")]
    assert markers == ["<fin>", "<fin>"], markers
    [first, second] = [m for m in messages if any(t["text"] == "<fin>" for t in m["tokens"])]
    assert first["tokens"][-1]["text"] == "<fin>" and len(first["tokens"]) > 1
    assert [t["text"] for t in second["tokens"]] == ["<fin>"]
    assert utterances(messages, "<fin>")[0]


async def test_keepalive_is_no_audio_and_the_stream_goes_on() -> None:
    keepalive = json.dumps({"type": "keepalive"})
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), CONFIG, audio("lights_on.wav"), keepalive, keepalive, "")
    assert code == 1000 and messages[-1]["finished"]
    assert same_words(EXPECTED["lights_on.wav"], [final_text(messages)])


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({**CONFIG, "model": None}, "model is required"),
        ({**CONFIG, "audio_format": "auto"}, "audio_format 'auto'"),
        ({k: v for k, v in CONFIG.items() if k != "sample_rate"}, "sample_rate"),
        ({**CONFIG, "num_channels": 0}, "num_channels"),
        ({**CONFIG, "enable_speaker_diarization": True}, "speaker diarization"),
        ({**CONFIG, "translation": {"type": "one_way", "target_language": "fr"}}, "translate"),
        ({**CONFIG, "language_hints": ["xx"]}, "'xx'"),
        ({**CONFIG, "language_hints": "en"}, "language_hints"),
        ({**CONFIG, "max_endpoint_delay_ms": 100}, "max_endpoint_delay_ms"),
        ({**CONFIG, "enable_language_identification": "yes"}, "true or false"),
        ({**CONFIG, "context": {"terms": "Calloway"}}, "context.terms"),
        ({**CONFIG, "context": {"notes": "x"}}, "'notes'"),
        ({**CONFIG, "context": 5}, "context"),
        ({**CONFIG, "speed": 2}, "'speed'"),
        ("not json", "JSON object"),
    ],
)
async def test_a_bad_configuration_is_a_400_and_the_close(config: dict[str, Any] | str, fragment: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), config, audio("lights_on.wav"))
    [error] = messages
    assert error["error_code"] == 400 and fragment in error["error_message"], error
    assert code == 1008


async def test_audio_before_the_configuration_is_refused() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(audio("lights_on.wav")[:3200])
        error = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosedError):
            await ws.recv()
    assert error["error_code"] == 400 and "not audio" in error["error_message"]
    assert ws.close_code == 1008


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (json.dumps(CONFIG), "the message has no type; expected finalize or keepalive"),
        (json.dumps({"type": "commit"}), "'commit'"),
        ("[1]", "JSON object"),
        (b"\x00\x01\x02", "bytes"),
        (json.dumps({"type": "finalize", "trailing_silence_ms": "300"}), "trailing_silence_ms"),
    ],
)
async def test_a_bad_message_mid_stream_is_a_400_after_the_finals_before_it(
    message: str | bytes, fragment: str
) -> None:
    """A second configuration, an unknown control, audio of a broken length: Soniox's error, then
    the Close; what was said before it was answered first."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), CONFIG, audio("lights_on.wav"), message)
    error = messages[-1]
    assert error["error_code"] == 400 and fragment in error["error_message"], error
    assert code == 1008
    assert same_words(EXPECTED["lights_on.wav"], [final_text(messages)])


async def test_the_key_in_the_bearer_header_or_in_the_configuration() -> None:
    """Pipecat's and LiveKit's `Authorization: Bearer`, or the configuration's `api_key` (Soniox's
    older way): either opens the stream; none, or a wrong one in either place, is Soniox's 401."""
    data = audio("lights_on.wav")
    async with running_daemon(api_key="sx-key") as daemon:
        bearer, _ = await stream(url(daemon), CONFIG, data, headers={"Authorization": "Bearer sx-key"})
        in_config, _ = await stream(url(daemon), {**CONFIG, "api_key": "sx-key"}, data)
        missing, missing_code = await stream(url(daemon), CONFIG, data)
        wrong, _ = await stream(url(daemon), {**CONFIG, "api_key": "nope"}, data)
        both, _ = await stream(
            url(daemon), {**CONFIG, "api_key": "nope"}, data, headers={"Authorization": "Bearer sx-key"}
        )
        http = f"http://127.0.0.1:{daemon.http_port}{soniox.PATH}"
        async with aiohttp.ClientSession() as session, session.get(http) as plain:
            assert plain.status == 426 and (await plain.json())["error_code"] == 426
    for answered in (bearer, in_config):
        assert same_words(EXPECTED["lights_on.wav"], [final_text(answered)])
    # `tokens` too, empty: Pipecat reads it from every message, and drops one without it unread
    [refusal] = missing
    assert refusal["error_code"] == 401 and refusal["tokens"] == [] and missing_code == 1008
    assert "requires an API key" in refusal["error_message"]
    assert "or in the first message's api_key" in refusal["error_message"], refusal
    for refused in (wrong, both):
        assert refused == [{"tokens": [], "error_code": 401, "error_message": "the API key is not valid"}]


async def test_without_the_key_a_configuration_is_refused_for_the_key_not_checked() -> None:
    """A client without the key learns nothing of the server from its configuration's refusal (which
    languages the engine has, its limits): the key is checked first, whatever else the message is."""
    async with running_daemon(api_key="sx-key") as daemon:
        bad_language, _ = await stream(url(daemon), {**CONFIG, "language_hints": ["xx"]})
        not_json, _ = await stream(url(daemon), "{")
        audio_first, _ = await stream(url(daemon), b"\x00\x00")
        wrong, _ = await stream(url(daemon), {**CONFIG, "api_key": "nope", "audio_format": "auto"})
    for refused in (bad_language, not_json, audio_first):
        assert [(m["error_code"], "requires an API key" in m["error_message"]) for m in refused] == [(401, True)]
    assert wrong == [{"tokens": [], "error_code": 401, "error_message": "the API key is not valid"}]


async def test_a_key_with_a_lone_surrogate_in_the_configuration_is_refused_as_not_valid() -> None:
    """JSON lets a client send `"\\ud800"`, which no UTF-8 encodes: the comparison raised, the
    handler died and the client got a bare 1000 with no refusal."""
    async with running_daemon(api_key="sx-key") as daemon:
        config = json.dumps(CONFIG)[:-1] + ', "api_key": "\\ud800"}'
        refused, code = await stream(url(daemon), config)
    assert (refused, code) == ([{"tokens": [], "error_code": 401, "error_message": "the API key is not valid"}], 1008)


async def test_a_query_parameter_is_refused() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "model=stt-rt-v5"), CONFIG)
    # `tokens` too, as in every Soniox error here: Pipecat drops a message without it unread
    assert messages == [{"tokens": [], "error_code": 400, "error_message": "model: unknown query parameter 'model'"}]
    assert code == 1008


async def test_no_session_to_open_is_a_503_and_try_again_later() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(CONFIG))
        await first.send(audio("lights_on.wav")[:32000])
        messages, code = await stream(url(daemon), CONFIG)
    assert [m["error_code"] for m in messages] == [503] and code == 1013


async def test_an_engine_failure_is_a_500_counted_once() -> None:
    """Soniox has no warning: a failed decode is its 500, then the Close."""
    async with running_daemon(CrashingEngineDouble()) as daemon:
        errors = daemon.core.metrics.errors.labels("engine_error")
        before = errors._value.get()
        config = {**CONFIG, "context": "crash"}
        messages, code = await stream(url(daemon), config, audio("lights_on.wav"))
        counted = errors._value.get() - before
    assert counted == 1 and messages[-1]["error_code"] == 500 and code == 1011


async def test_shutdown_sends_the_final_in_progress_then_a_503() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(CONFIG))
        await ws.send(data[: len(data) * 2 // 3])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert final_text(messages) and messages[-1]["error_code"] == 503
    assert ws.close_code == 1001


async def test_shutdown_closes_a_stream_still_awaiting_its_configuration() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert [m["error_code"] for m in messages] == [503] and ws.close_code == 1001


async def test_shutdown_closes_the_streams_awaiting_their_configuration_when_one_client_is_gone() -> None:
    """A client gone (a reset not yet seen by its handler) at shutdown made writing its 503 raise,
    which escaped `close_awaiting` and the daemon's graceful stop; the others are still closed."""
    async with (
        running_daemon() as daemon,
        websockets.connect(url(daemon)) as gone,
        websockets.connect(url(daemon)) as staying,
    ):
        await eventually(lambda: len(daemon.soniox.serving) == 2)
        port = gone.local_address[1]
        (reset,) = [
            c for c in daemon.soniox.serving if c.transport and c.transport.get_extra_info("peername")[1] == port
        ]
        assert reset.transport is not None
        reset.transport.close()  # as the client's reset would, before its handler hears of it
        await daemon.soniox.close_awaiting("shutdown")
        messages = [json.loads(message) async for message in staying]
    assert [m["error_code"] for m in messages] == [503] and staying.close_code == 1001


async def test_no_configuration_within_the_first_message_timeout_is_a_408_and_1008() -> None:
    """`first_message_timeout_s`, as on `/v1/stream`: its error (`timeout`, here in Soniox's shape)
    and its Close; the idle timeout has nothing to do with it."""
    async with (
        running_daemon(first_message_timeout_s=1.0, idle_timeout_s=600) as daemon,
        websockets.connect(url(daemon)) as ws,
    ):
        errors = daemon.core.metrics.errors.labels("timeout")
        error = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        counted = errors._value.get()
    assert error == {
        "tokens": [],
        "error_code": 408,
        "error_message": "no configuration within 1 s of connecting (first_message_timeout_s)",
    }
    assert ws.close_code == 1008 and counted == 1


async def test_a_configuration_arriving_at_the_first_message_timeout_gets_as_long_again() -> None:
    """A configuration still arriving when the time is up (a slow link) is taken, as `/v1/stream`'s
    first message is: the client has not been idle."""
    async with running_daemon(first_message_timeout_s=2.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port, soniox.PATH)
        frame = client_frame(json.dumps({**CONFIG, "client_reference_id": "x" * 200}).encode())
        writer.write(frame[:100])
        async with websockets.connect(url(daemon)) as idle:  # closed once the time is up
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await idle.recv()
        writer.write(frame[100:] + client_frame(b"", opcode=BINARY_OPCODE))
        frames = await read_server_frames_until_close(reader)
        writer.close()
    assert idle.close_code == 1008
    assert json.loads(frames[0][1])["finished"] is True, frames
    assert frames[-1][1][:2] == (1000).to_bytes(2, "big"), frames


async def test_the_idle_timeout_is_a_408_after_the_finals() -> None:
    """The server's own end of the stream, as on the other APIs not in the error metric."""
    async with running_daemon(idle_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        errors = daemon.core.metrics.errors.labels("idle_timeout")
        await ws.send(json.dumps(CONFIG))
        await ws.send(audio("lights_on.wav"))
        messages = [json.loads(message) async for message in ws]
        assert errors._value.get() == 0
    assert same_words(EXPECTED["lights_on.wav"], [final_text(messages)])
    assert messages[-1]["error_code"] == 408 and "idle_timeout_s" in messages[-1]["error_message"]
    assert ws.close_code == 1001


async def test_the_next_utterances_partial_waits_for_the_final_before_it() -> None:
    """A command spoken whole while the one before still decodes: its non-final tokens come after
    that final and its `<end>`, in the same message, never before them."""
    engine = FirstFinalGatedEngineDouble()
    config = {**CONFIG, "enable_endpoint_detection": True}
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(config))
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(b"")
        messages = [json.loads(message) async for message in ws]
    first_end = next(i for i, m in enumerate(messages) if any(t["text"] == "<end>" for t in m["tokens"]))
    before = {normalise(t["text"]) for m in messages[:first_end] for t in m["tokens"] if not t["is_final"]}
    assert not {"what", "time"} & before, before
    held = [t for t in messages[first_end]["tokens"] if not t["is_final"]]
    assert {"what", "time"} & {normalise(t["text"]) for t in held}, messages[first_end]
    said = utterances(messages)
    assert same_words(EXPECTED["three_commands.wav"], said), said


async def test_context_terms_text_and_hints_reach_the_engine() -> None:
    """`context.terms` are names for the decode, `context.text` its biasing text, a single
    `language_hints` entry its language; `general` is checked and not used."""
    engine = ContextRecordingEngineDouble()
    context = {"text": "kitchen blinds", "terms": ["Calloway", " "], "general": [{"key": "domain", "value": "home"}]}
    config = {**CONFIG, "language_hints": ["en"], "context": context}
    async with running_daemon(engine) as daemon:
        messages, _ = await stream(url(daemon), config, audio("lights_on.wav"))
    assert final_text(messages)
    assert engine.names[0][:1] == ("Calloway",)
    assert "kitchen blinds" in engine.contexts[0] and engine.languages[0] == "en"


async def test_a_noise_without_words_gets_no_end_token() -> None:
    """An utterance in which no words were heard (a cough), of which no token was sent, gets no
    `<end>`: no client began a speech for it to end."""
    data = audio("lights_on.wav")
    config = {**CONFIG, "enable_endpoint_detection": True}
    async with running_daemon(FirstUtteranceIsNoiseEngineDouble()) as daemon:
        messages, _ = await stream(url(daemon), config, data + data)
    assert utterances(messages) == [final_text(messages).strip()]
    assert same_words(EXPECTED["lights_on.wav"], utterances(messages))


async def test_over_the_connection_cap_the_upgrade_is_refused_in_sonioxs_body() -> None:
    """The 503 before the upgrade has Soniox's body, which the daemon's own clients (bench) read."""
    async with (
        running_daemon(max_websocket_connections=1) as daemon,
        websockets.connect(url(daemon)),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url(daemon))
    said = handshake_failure(refused.value)
    assert said.startswith("the daemon refused the connection with HTTP 503: error: "), said
    assert "max_websocket_connections" in said, said


async def test_a_message_over_the_size_limit_closes_with_1009() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon), max_size=None) as ws:
        await ws.send(json.dumps(CONFIG))
        await ws.send(bytes((1 << 20) + 2))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
    assert ws.close_code == 1009
