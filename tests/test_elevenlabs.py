"""ElevenLabs' realtime speech-to-text API (`/v1/speech-to-text/realtime`) end to end: real
daemon, real Silero, real tiny.en, a raw WebSocket client for every message and for input no SDK
would send."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import pytest
import websockets
from multidict import MultiDict

from satellite_asr.core import Core
from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.protocols import elevenlabs
from satellite_asr.server import Daemon
from tests.doubles import (
    ContextRecordingEngineDouble,
    CrashingEngineDouble,
    FirstFinalGatedEngineDouble,
    FirstUtteranceIsNoiseEngineDouble,
    GatedEngineDouble,
    SwitchesLanguageEngineDouble,
)
from tests.helpers import (
    EXPECTED,
    daemon_settings,
    exchange,
    fixture_16k,
    normalise,
    pcm16,
    running_daemon,
    same_words,
)

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
MARKER = "end_of_test"
"""A message type the API does not have: its `input_error` comes after the answers to all sent before it."""


def scribe_url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{elevenlabs.PATH}?model_id=scribe_v2_realtime&{query}"


def audio(name: str = "three_commands.wav", rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(name), rate)


def chunk(data: bytes = b"", *, commit: bool = False, **fields: object) -> str:
    """An `input_audio_chunk` as the clients send it."""
    encoded = base64.b64encode(data).decode()
    return json.dumps({"message_type": "input_audio_chunk", "audio_base_64": encoded, "commit": commit, **fields})


COMMIT = chunk(commit=True)


def is_marker_error(message: dict[str, Any]) -> bool:
    return message["message_type"] == "input_error" and MARKER in message["error"]


async def scribe(
    url: str,
    data: bytes,
    *after: str,
    headers: dict[str, str] | None = None,
    paced: bool = False,
    release: tuple[asyncio.Event, float] | None = None,
) -> Messages:
    """`exchange` in ElevenLabs' JSON chunks, ended by `after` (by default a commit); every message
    the server sends up to the marker's `input_error`, which is left out."""
    marker = json.dumps({"message_type": MARKER})
    messages, _ = await exchange(
        url,
        data,
        *(after or (COMMIT,)),
        marker,
        headers=headers,
        paced=paced,
        release=release,
        frame=chunk,
        until=is_marker_error,
    )
    assert is_marker_error(messages[-1]), messages[-3:]
    return messages[:-1]


def of_kind(messages: Messages, kind: str) -> Messages:
    return [m for m in messages if m["message_type"] == kind]


def committed_texts(messages: Messages) -> list[str]:
    return [m["text"] for m in of_kind(messages, "committed_transcript")]


async def test_three_commands_as_a_livekit_agent_asks_for_them() -> None:
    """LiveKit's query with server VAD and language detection: `session_started` first, each
    command's partials then its commit, each commit followed by its copy with words and language;
    the client's last commit, with nothing in progress, answered by an empty commit."""
    query = (
        "audio_format=pcm_16000&commit_strategy=vad&enable_logging=false&include_language_detection=true"
        "&vad_silence_threshold_secs=1.5&vad_threshold=0.4&language_code=en&keyterms=Calloway"
    )
    async with running_daemon() as daemon:
        messages = await scribe(scribe_url(daemon, query), audio(), paced=True)
    started = messages[0]
    assert started["message_type"] == "session_started" and started["session_id"]
    assert started["config"] == {
        "sample_rate": 16000,
        "audio_format": "pcm_16000",
        "model_id": "scribe_v2_realtime",
        "commit_strategy": "vad",
        "keyterms": ["Calloway"],
        "language_code": "en",
        "vad_silence_threshold_secs": 1.5,
        "vad_threshold": 0.4,
        "include_timestamps": False,
        "include_language_detection": True,
        "no_verbatim": False,
        "filter_background_audio": False,
        "enable_logging": False,
    }
    *commands, answer = committed_texts(messages)
    assert same_words(EXPECTED["three_commands.wav"], commands) and answer == ""
    kinds = [m["message_type"] for m in messages[1:]]
    assert kinds[0] == "partial_transcript", "each command's partials come before its commit"
    for at, kind in enumerate(kinds):
        if kind == "committed_transcript":
            assert kinds[at + 1] == "committed_transcript_with_timestamps"
    for timed in of_kind(messages, "committed_transcript_with_timestamps"):
        assert timed["language_code"] == "eng"
        words = [w["text"] for w in timed["words"] if w["type"] == "word"]
        assert words == timed["text"].split()
        assert all(w["start"] <= w["end"] for w in timed["words"]), timed


async def test_the_finals_of_a_file_sent_at_full_speed_without_timestamps() -> None:
    """The default (`manual`) commit strategy: the daemon still commits each utterance it hears
    end; no `committed_transcript_with_timestamps` unless asked for."""
    async with running_daemon() as daemon:
        messages = await scribe(scribe_url(daemon), audio())
    *commands, answer = committed_texts(messages)
    assert same_words(EXPECTED["three_commands.wav"], commands) and answer == ""
    assert of_kind(messages, "committed_transcript_with_timestamps") == []
    assert messages[0]["config"]["commit_strategy"] == "manual" and "language_code" not in messages[0]["config"]


async def test_a_commit_ends_the_utterance_in_progress_and_the_stream_goes_on() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon:
        messages = await scribe(scribe_url(daemon), data[: len(data) * 2 // 3], COMMIT, chunk(data), COMMIT)
    forced, command, answer = committed_texts(messages)
    assert forced and answer == ""
    assert same_words(EXPECTED["lights_on.wav"], [command])


@pytest.mark.parametrize(("audio_format", "rate"), [("ulaw_8000", 8000), ("pcm_48000", 48000), ("pcm_22050", 22050)])
async def test_each_audio_format_is_decoded(audio_format: str, rate: int) -> None:
    data = audio("lights_on.wav", rate)
    if audio_format == "ulaw_8000":
        audioop = pytest.importorskip("audioop")  # the reference G.711 encoder (Python <= 3.12)
        data = audioop.lin2ulaw(data, 2)
    query = f"audio_format={audio_format}"
    async with running_daemon() as daemon:
        messages = await scribe(scribe_url(daemon, query), data, chunk(commit=True, sample_rate=rate))
    command, _ = committed_texts(messages)
    assert same_words(EXPECTED["lights_on.wav"], [command])


@pytest.mark.parametrize(
    ("query", "language"),
    [
        ("language_code=en", "en"),
        ("language_code=eng", "en"),
        ("language_code=en-US&secondary_languages=eng", "en"),
        ("language_code=en&secondary_languages=de", None),
        ("include_language_detection=true", None),
        ("include_language_detection=true&language_code=eng", "en"),
        ("", None),
        ("secondary_languages=de", None),
        ("language_code=nob", "no"),
        ("language_code=cmn", "zh"),
        ("language_code=fil", "tl"),
        ("secondary_languages=en&secondary_languages=eng", None),
    ],
)
def test_the_stream_language(query: str, language: str | None) -> None:
    """Either ISO code names a language (Pipecat sends `eng`); the one `language_code` names, even
    named again as a secondary language, is the stream's, language detection beside it included;
    other languages that may be spoken alongside it, secondary languages with no main one, or
    detection asked for with none named let the engine detect (and so does the daemon's
    `default_language`, none by default)."""
    multilingual = WhisperEngine(model="small")  # its languages are known before it loads (it is not loaded)
    params = elevenlabs.parse_params(MultiDict(parse_qsl(query)), Core(daemon_settings(), multilingual))
    assert isinstance(params, elevenlabs.RealtimeParams) and params.language == language


async def test_the_detected_language_of_each_commit_as_elevenlabs_names_it() -> None:
    """A multilingual engine's language, per utterance, in three-letter ISO 639-3."""
    query = "include_language_detection=true"
    async with running_daemon(SwitchesLanguageEngineDouble("de", "fil")) as daemon:
        messages = await scribe(scribe_url(daemon, query), audio())
    timed = of_kind(messages, "committed_transcript_with_timestamps")
    assert [m["language_code"] for m in timed[:3]] == ["deu", "fil", "deu"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("audio_format=pcm_11025", "audio_format"),
        ("audio_format=mp3_44100", "audio_format"),
        ("commit_strategy=auto", "commit_strategy"),
        ("vad_threshold=0.95", "vad_threshold"),
        ("vad_silence_threshold_secs=soon", "vad_silence_threshold_secs"),
        ("min_speech_duration_ms=10", "min_speech_duration_ms"),
        ("include_timestamps=yes", "include_timestamps"),
        ("language_code=xx", "language_code"),
        ("language_code=deu", "language_code"),  # tiny.en is English only
        ("secondary_languages=fra", "secondary_languages"),
        ("token=abc", "token"),
        ("entity_detection=pii", "entity_detection"),
        ("transcript_edit=" + quote("fix the grammar"), "transcript_edit"),
        ("no_such=1", "no_such"),
        ("model_id=scribe_v2_realtime", "model_id"),  # twice, with the one every URL here has
    ],
)
async def test_a_bad_parameter_is_an_input_error_and_a_close(query: str, parameter: str) -> None:
    """After the upgrade, an `input_error` naming the parameter (the clients report its text), then
    the Close; counted once."""
    messages: Messages = []
    async with running_daemon() as daemon, websockets.connect(scribe_url(daemon, query)) as ws:
        with pytest.raises(websockets.ConnectionClosedError):  # an error code ends the iteration so
            async for message in ws:
                messages.append(json.loads(message))
        refused = daemon.core.metrics.errors.labels("invalid_query_parameter")._value.get()
    assert ws.close_code == elevenlabs.INPUT_REFUSED and refused == 1
    [error] = messages
    assert error["message_type"] == "input_error" and error["error"].startswith(f"{parameter}: ")


async def test_bad_messages_are_input_errors_and_the_stream_goes_on() -> None:
    """Each refused message is refused whole (a chunk's audio is not fed when another of its fields
    is wrong) and the stream goes on."""
    data = audio("lights_on.wav")
    bad = [
        "not json",
        json.dumps({"message_type": "commit"}),
        json.dumps({"type": "input_audio_chunk", "audio_base_64": ""}),
        chunk(data[:3200], sample_rate=24000),
        chunk(data[:3200], commit="yes"),
        chunk(data[:3200], language="en"),
        chunk(data[:3200], previous_text=7),
        json.dumps({"message_type": "input_audio_chunk", "audio_base_64": "not base64!"}),
        json.dumps({"message_type": "input_audio_chunk", "audio_base_64": 12}),
        json.dumps({"message_type": "input_audio_chunk", "audio_base_64": "ü"}),
        chunk(b"\x00\x01\x02"),
        data[:3200],
    ]
    async with running_daemon() as daemon:
        messages = await scribe(scribe_url(daemon), data[:3200], *bad, chunk(data, previous_text="lights"), COMMIT)
    errors = of_kind(messages, "input_error")
    assert len(errors) == len(bad), errors
    assert "not a JSON object" in errors[0]["error"] or "JSON" in errors[0]["error"]
    assert "unknown message_type 'commit'" in errors[1]["error"]
    assert "sample_rate 24000" in errors[3]["error"] and "commit" in errors[4]["error"]
    assert "language" in errors[5]["error"] and "previous_text" in errors[6]["error"]
    assert "base64" in errors[7]["error"] and "base64" in errors[8]["error"] and "base64" in errors[9]["error"]
    assert "not a whole number of s16le frames" in errors[10]["error"]
    assert "not as binary messages" in errors[11]["error"]
    command, answer = committed_texts(messages)
    assert same_words(EXPECTED["lights_on.wav"], [command]) and answer == ""


async def test_keyterms_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    query = "keyterms=Calloway%20blinds&keyterms=Aoife&keyterms=%20"
    async with running_daemon(engine) as daemon:
        await scribe(scribe_url(daemon, query), audio("lights_on.wav"))
    assert [names[:2] for names in engine.names] == [("Calloway blinds", "Aoife")]


async def test_the_next_utterance_waits_for_the_commit_of_the_one_before() -> None:
    """With two decodes at once, the next utterance is heard while the one before decodes its
    final: its partials do not come before that commit, so a client never takes the next command's
    words as the end of the last."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon:
        messages = await scribe(scribe_url(daemon), audio(), paced=True, release=(engine.gate, 4.8))
    *commands, _ = committed_texts(messages)
    assert same_words(EXPECTED["three_commands.wav"], commands)
    first_commit = next(at for at, m in enumerate(messages) if m["message_type"] == "committed_transcript")
    early = [m["text"] for m in of_kind(messages[:first_commit], "partial_transcript")]
    assert early and not any({"what", "time"} & set(normalise(text).split()) for text in early), early


async def test_a_noise_without_words_is_no_commit() -> None:
    """An utterance in which no words were heard (a cough) gave no partial with words: nothing is
    committed for it, as a client that began no speech expects nothing to end."""
    data = audio("lights_on.wav")
    async with running_daemon(FirstUtteranceIsNoiseEngineDouble()) as daemon:
        messages = await scribe(scribe_url(daemon), data + data)
    command, answer = committed_texts(messages)
    assert same_words(EXPECTED["lights_on.wav"], [command]) and answer == ""


async def test_an_engine_failure_is_a_warning_counted_once() -> None:
    engine = CrashingEngineDouble()
    async with running_daemon(engine) as daemon:
        errors = daemon.core.metrics.errors.labels("engine_error")
        before = errors._value.get()
        messages = await scribe(scribe_url(daemon, "keyterms=crash"), audio("lights_on.wav"))
        counted = errors._value.get() - before
    assert counted == 1
    [failure] = of_kind(messages, "warning")
    assert failure["warning"]


async def test_the_key_in_xi_api_key_and_refusals_in_elevenlabs_body() -> None:
    async with running_daemon(api_key="el-key") as daemon:
        messages = await scribe(scribe_url(daemon), audio("lights_on.wav"), headers={"xi-api-key": "el-key"})
        assert len(committed_texts(messages)) == 2
        http = f"http://127.0.0.1:{daemon.http_port}{elevenlabs.PATH}"
        async with aiohttp.ClientSession() as session:
            async with session.get(http, headers={"xi-api-key": "wrong"}) as wrong:
                assert wrong.status == 401
                body = await wrong.json()
                assert body == {"detail": {"status": "invalid_api_key", "message": "the API key is not valid"}}
            async with session.get(http, headers={"xi-api-key": "el-key"}) as plain:
                assert plain.status == 426 and (await plain.json())["detail"]["status"] == "websocket_required"


async def test_shutdown_sends_the_commit_in_progress_then_going_away() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(scribe_url(daemon)) as ws:
        await ws.send(chunk(data[: len(data) * 2 // 3]))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert messages[-1]["message_type"] == "committed_transcript" and messages[-1]["text"]
    assert ws.close_code == 1001


async def test_no_session_to_open_is_resource_exhausted_and_try_again_later() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(scribe_url(daemon)) as first,
    ):
        await first.recv()
        async with websockets.connect(scribe_url(daemon)) as second:
            messages = []
            with pytest.raises(websockets.ConnectionClosedError):  # an error code ends the iteration so
                async for message in second:
                    messages.append(json.loads(message))
    assert [m["message_type"] for m in messages] == ["resource_exhausted"]
    assert second.close_code == 1013


async def test_partials_held_back_behind_a_pending_commit_are_sent_once_it_is() -> None:
    """The doc: speech heard while the utterance before still decodes its final "sends its partials
    once that commit is sent". Here the second command is spoken whole while the first still decodes
    (its final gated until all the audio is sent): its partial must still come, after the first
    commit and before its own, not be dropped."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon:
        messages = await scribe(scribe_url(daemon), audio(), paced=True, release=(engine.gate, 1000.0))
    said = [(m["message_type"], m["text"]) for m in messages if m["message_type"] != "session_started"]
    commits = [at for at, (kind, _) in enumerate(said) if kind == "committed_transcript"]
    assert len(commits) == 4, said
    between = [text for kind, text in said[commits[0] + 1 : commits[1]] if kind == "partial_transcript"]
    assert between and {"what", "time"} & set(normalise(between[-1]).split()), said


async def test_session_started_names_the_language_the_daemon_chose() -> None:
    """Without `language_code` the daemon's `language` setting is the stream's language (the doc:
    "Absent: the `language` setting"), and every commit's copy names it: `session_started`, "with
    the settings in effect", must name it too, not leave the client believing the language is
    detected as ElevenLabs would."""
    async with running_daemon(language="en") as daemon:
        messages = await scribe(scribe_url(daemon, "include_timestamps=true"), audio("lights_on.wav"))
    config = messages[0]["config"]
    [timed, _] = of_kind(messages, "committed_transcript_with_timestamps")
    assert timed["language_code"] == "eng"
    assert config.get("language_code") == "en", config


async def test_tagalog_heard_by_whisper_is_filipino_as_elevenlabs_names_it() -> None:
    """ElevenLabs names Filipino `fil` (its clients' language tables have no `tgl`), and the daemon
    takes a client's `fil` as Whisper's `tl`: what Whisper reports as `tl` goes back as `fil`, the
    code the client sent and reads, not `tgl`."""
    query = "include_language_detection=true"
    async with running_daemon(SwitchesLanguageEngineDouble("tl")) as daemon:
        messages = await scribe(scribe_url(daemon, query), audio("lights_on.wav"))
    [timed, _] = of_kind(messages, "committed_transcript_with_timestamps")
    assert timed["language_code"] == "fil"


async def test_an_engine_failure_the_stream_survives_does_not_end_livekits_stream() -> None:
    """An engine failure is reported and the stream goes on, the utterance's commit following with
    the text the partials were sure of. LiveKit's plugin ends its stream (and reconnects, losing
    that commit, the finals still to come and the audio in flight) on every error message type the
    API has; ElevenLabs' non-fatal `warning` it logs and reads on. So the message for a failure the
    stream survives must be one LiveKit reads on past, and the commit must still come."""
    from types import SimpleNamespace

    from livekit.agents import APIError
    from livekit.plugins.elevenlabs.stt import SpeechStream

    async with running_daemon(CrashingEngineDouble()) as daemon:
        messages = await scribe(scribe_url(daemon, "keyterms=crash"), audio("lights_on.wav"))
    options = SimpleNamespace(include_timestamps=False)
    livekit = SimpleNamespace(_language=None, start_time_offset=0.0, _opts=options, _speaking=False)
    livekit.__dict__.update(_last_partial_text="", _final_message_type="committed_transcript", _server_vad=None)
    livekit.__dict__.update(_event_ch=SimpleNamespace(send_nowait=lambda event: None))
    read = []
    for message in messages:
        try:
            SpeechStream._process_stream_event(livekit, message)  # type: ignore[arg-type]
        except APIError:
            break
        read.append(message["message_type"])
    assert read == [m["message_type"] for m in messages], read
    assert any("failed" in m.get("warning", "") for m in messages), messages


async def test_speech_sent_while_a_commit_waits_on_a_busy_engine_is_not_lost_to_the_idle_timeout() -> None:
    """A commit waits for its final, the reading of the client's next messages with it. Time the
    client's audio waits on the server does not count toward the idle timeout (`quiet_seconds`):
    a busy engine must not expire a session whose speech it has not listened to yet. Here the
    first commit's decode takes longer than `idle_timeout_s`; the next command, sent meanwhile,
    must still be heard and committed."""
    data = audio("lights_on.wav")
    engine = GatedEngineDouble()
    messages: Messages = []
    async with running_daemon(engine, idle_timeout_s=2) as daemon, websockets.connect(scribe_url(daemon)) as ws:
        await ws.send(chunk(data[: len(data) * 2 // 3]))
        await asyncio.sleep(0.5)
        await ws.send(COMMIT)
        await ws.send(chunk(data))
        await ws.send(COMMIT)
        await asyncio.sleep(3.5)
        engine.gate.set()
        messages = [json.loads(message) async for message in ws]
    assert len([text for text in committed_texts(messages) if text]) == 2, messages


async def test_a_commit_with_nothing_in_progress_is_answered_empty_though_a_capped_final_is_pending() -> None:
    """The doc: a commit "with none in progress, an empty `committed_transcript` answers the
    commit". An utterance the length cap ended (`forced`, as a commit's is) whose final is still
    decoding when the client commits is not the commit's answer: it ended before the commit, by
    the daemon's own rule, and gets its own commit; the client's commit still gets the empty one."""
    data = audio("lights_on.wav") + bytes(2 * 16000 * 2)  # the command, then 2 s of silence
    engine = GatedEngineDouble()
    marker = json.dumps({"message_type": MARKER})
    async with (
        running_daemon(engine, max_utterance_s=1.0) as daemon,
        websockets.connect(scribe_url(daemon)) as ws,
    ):
        for offset in range(0, len(data), 3200):
            await ws.send(chunk(data[offset : offset + 3200]))
        await ws.send(COMMIT)
        await ws.send(marker)
        await asyncio.sleep(1.0)
        assert engine.finals, "the length cap ended an utterance, whose final waits for the gate"
        engine.gate.set()
        messages = []
        async for message in ws:
            messages.append(json.loads(message))
            if is_marker_error(messages[-1]):
                break
    texts = committed_texts(messages)
    assert len(texts) >= 2 and all(texts[:-1]), texts
    assert texts[-1] == "", texts
