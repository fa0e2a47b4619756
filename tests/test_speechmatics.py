"""Speechmatics' real-time API (`/v2`) and Agent STT API (`/v2/agent`) end to end: real daemon, real
Silero, real tiny.en, a raw WebSocket client for every message and for input no SDK would send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from satellite_asr.audio import PcmDecoder
from satellite_asr.protocols import speechmatics
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import EXPECTED, PCM_FRAME_BYTES, fixture_16k, normalise, pcm16, running_daemon, same_words

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
FIXTURE = "three_commands.wav"
AUDIO_FORMAT = {"type": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
START = {
    "message": "StartRecognition",
    "audio_format": AUDIO_FORMAT,
    "transcription_config": {"language": "en", "enable_partials": True},
}
END = json.dumps({"message": "EndOfStream", "last_seq_no": 0})


def url(daemon: Daemon, path: str = speechmatics.PATH, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{path}{'?' + query if query else ''}"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


def start(**config: Any) -> dict[str, Any]:
    return {**START, "transcription_config": {**START["transcription_config"], **config}}


async def stream(
    target: str,
    first: dict[str, Any] | str | bytes,
    data: bytes = b"",
    *after: str | bytes,
    headers: dict[str, str] | None = None,
    frame: int = PCM_FRAME_BYTES,
    paced: bool = False,
) -> tuple[Messages, int | None]:
    """`first`, `data` in 100 ms binary messages, the `after` messages (by default `EndOfStream`);
    every message until the Close, and its code."""
    received: Messages = []
    async with websockets.connect(target, additional_headers=headers) as ws:

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosedError):
                async for message in ws:
                    received.append(json.loads(message))

        reader = asyncio.create_task(read())
        await ws.send(first if isinstance(first, str | bytes) else json.dumps(first))
        for offset in range(0, len(data), frame):
            await ws.send(data[offset : offset + frame])
            if paced:
                await asyncio.sleep(0.1)
        for message in after or (END,):
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(message)
        await reader
    return received, ws.close_code


async def read_all(ws: websockets.ClientConnection) -> Messages:
    """Every message until the Close, whatever its code."""
    messages: Messages = []
    with contextlib.suppress(websockets.ConnectionClosedError):
        async for message in ws:
            messages.append(json.loads(message))
    return messages


def kinds(messages: Messages) -> list[str]:
    return [message["message"] for message in messages if message["message"] != "AudioAdded"]


def of(messages: Messages, kind: str) -> Messages:
    return [message for message in messages if message["message"] == kind]


def finals(messages: Messages, kind: str = "AddTranscript") -> list[str]:
    key = "segment" if kind == "AddSegment" else "metadata"
    return [m[key]["transcript"].strip() for m in of(messages, kind) if m[key]["transcript"].strip()]


async def test_three_commands_every_message_of_the_real_time_api() -> None:
    """RecognitionStarted, an AudioAdded per audio message, partials then one AddTranscript per
    command (words in `results`, punctuation its own result), EndOfUtterance after each with
    end-of-utterance detection on, EndOfTranscript last, then a normal Close."""
    config = start(
        max_delay=1.0, conversation_config={"end_of_utterance_silence_trigger": 0.5}, operating_point="enhanced"
    )
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), config, audio(), paced=True)
    assert code == 1000
    assert messages[0]["message"] == "RecognitionStarted" and messages[0]["id"]
    assert messages[-1] == {"message": "EndOfTranscript"}
    added = of(messages, "AudioAdded")
    assert [m["seq_no"] for m in added] == list(range(1, len(added) + 1))
    assert len(added) == -(-len(audio()) // PCM_FRAME_BYTES)
    said = finals(messages)
    assert same_words([" ".join(EXPECTED[FIXTURE])], [" ".join(said)]), said
    assert len(said) == 3 and len(of(messages, "EndOfUtterance")) == 3
    order = [kind for kind in kinds(messages) if kind in ("AddTranscript", "EndOfUtterance")]
    assert order == ["AddTranscript", "EndOfUtterance"] * 3
    assert of(messages, "AddPartialTranscript"), "partials"
    for message in of(messages, "AddTranscript"):
        words = [r["alternatives"][0]["content"] for r in message["results"] if r["type"] == "word"]
        assert normalise(" ".join(words)) == normalise(message["metadata"]["transcript"])
        assert all(r["alternatives"][0]["language"] == "en" for r in message["results"])
        assert message["metadata"]["start_time"] < message["metadata"]["end_time"]
        marks = [r for r in message["results"] if r["type"] == "punctuation"]
        assert all(r["attaches_to"] == "previous" for r in marks)


async def test_no_partials_no_end_of_utterance_unless_asked() -> None:
    """`enable_partials` false (the default) and no conversation_config: only the finals."""
    first = {**START, "transcription_config": {"language": "en"}}
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), first, audio())
    assert len(finals(messages)) == 3
    assert not of(messages, "AddPartialTranscript") and not of(messages, "EndOfUtterance")


async def test_set_recognition_config_turns_partials_on() -> None:
    """SetRecognitionConfig's enable_partials takes effect for the audio after it."""
    first = {**START, "transcription_config": {"language": "en"}}
    change = json.dumps({"message": "SetRecognitionConfig", "transcription_config": {"enable_partials": True}})
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(first))
        await ws.send(change)
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
            await asyncio.sleep(0.1)
        await ws.send(END)
        messages = [json.loads(m) async for m in ws]
    assert of(messages, "AddPartialTranscript") and len(finals(messages)) == 3


async def test_force_end_of_utterance_is_answered_once() -> None:
    """ForceEndOfUtterance midway through the first command: its words so far as a final and one
    EndOfUtterance; with nothing in progress, EndOfUtterance alone; each answered exactly once, and
    marked `forced` (Speechmatics marks the messages a ForceEndOfUtterance brought so)."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    force = json.dumps({"message": "ForceEndOfUtterance", "timestamp": 1.2})
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), start(), data[:middle], force, force, END)
    assert code == 1000
    order = [k for k in kinds(messages) if k in ("AddTranscript", "EndOfUtterance")]
    assert order == ["AddTranscript", "EndOfUtterance", "EndOfUtterance"], order
    assert normalise(finals(messages)[0]).split()[0] == normalise(EXPECTED[FIXTURE][0]).split()[0]
    answers = [m for m in messages if m["message"] in ("AddTranscript", "EndOfUtterance")]
    assert all(m.get("forced") is True for m in answers), answers
    assert not any("forced" in m for m in of(messages, "AddPartialTranscript"))


async def test_only_what_a_force_brought_is_forced() -> None:
    """The finals the daemon's own turn detection ends are not marked `forced`."""
    conversation = {"end_of_utterance_silence_trigger": 0.5}
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), start(conversation_config=conversation), audio())
    ends = [m for m in messages if m["message"] in ("AddTranscript", "EndOfUtterance")]
    assert len(ends) == 6 and not any("forced" in m for m in ends), ends


async def test_agent_api_segments_and_turns() -> None:
    """Agent STT with the service's turns (`vad`, its default): each command StartOfTurn,
    AddPartialSegments, one AddSegment, EndOfTurn; with `external` (LiveKit's and Pipecat's
    default) the segments alone."""
    agent = {**start(model="linden-1", emit_sentences=False), "turn_config": {"turn_detection_mode": "vad"}}
    async with running_daemon() as daemon:
        turns, _ = await stream(url(daemon, speechmatics.AGENT_PATH), agent, audio(), paced=True)
        external = {**agent, "turn_config": {"turn_detection_mode": "external"}}
        plain, _ = await stream(url(daemon, speechmatics.AGENT_PATH), external, audio())
    said = finals(turns, "AddSegment")
    assert same_words([" ".join(EXPECTED[FIXTURE])], [" ".join(said)]), said
    framing = [k for k in kinds(turns) if k in ("StartOfTurn", "AddSegment", "EndOfTurn")]
    assert framing == ["StartOfTurn", "AddSegment", "EndOfTurn"] * 3
    assert of(turns, "AddPartialSegment") and turns[-1] == {"message": "EndOfTranscript"}
    assert len(finals(plain, "AddSegment")) == 3 and not of(plain, "StartOfTurn") and not of(plain, "EndOfTurn")


async def test_agent_force_end_with_nothing_in_progress_is_an_empty_segment() -> None:
    first = {**start(model="linden-1"), "turn_config": {"turn_detection_mode": "external"}}
    force = json.dumps({"message": "ForceEndOfUtterance"})
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon, speechmatics.AGENT_PATH), first, b"", force, END)
    assert kinds(messages) == ["RecognitionStarted", "AddSegment", "EndOfTurn", "EndOfTranscript"], messages
    assert of(messages, "AddSegment") == [
        {"message": "AddSegment", "segment": {"transcript": ""}, "metadata": {"start_time": 0.0, "end_time": 0.0}}
    ]
    assert of(messages, "EndOfTurn") == [{"message": "EndOfTurn", "metadata": {"end_time": 0.0}}]


async def test_agent_force_end_with_external_turns_is_a_segment_then_end_of_turn() -> None:
    """With the client's turns (LiveKit's and Pipecat's default), ForceEndOfUtterance midway through
    the first command is answered as Speechmatics answers it: the segment so far, then EndOfTurn
    (LiveKit's END_OF_SPEECH and usage come from it); once, and no StartOfTurn."""
    first = {**start(model="linden-1"), "turn_config": {"turn_detection_mode": "external"}}
    force = json.dumps({"message": "ForceEndOfUtterance", "timestamp": 1.2})
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon, speechmatics.AGENT_PATH), first, audio()[: 12 * PCM_FRAME_BYTES], force, END
        )
    framing = [k for k in kinds(messages) if k in ("StartOfTurn", "AddSegment", "EndOfTurn")]
    assert framing == ["AddSegment", "EndOfTurn"] and code == 1000, messages
    assert normalise(finals(messages, "AddSegment")[0]).split()[0] == normalise(EXPECTED[FIXTURE][0]).split()[0]


@pytest.mark.parametrize("path", [speechmatics.PATH, speechmatics.AGENT_PATH])
async def test_get_speakers_is_an_empty_result_and_the_session_goes_on(path: str) -> None:
    """GetSpeakers (LiveKit's get_speaker_ids(), its diarization on by default): an empty
    SpeakersResult, the daemon naming no speakers, now; with `final` true just before
    EndOfTranscript; the finals all come."""
    get = json.dumps({"message": "GetSpeakers"})
    at_end = json.dumps({"message": "GetSpeakers", "final": True})
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, path), start(), audio(), get, at_end, END)
    assert (
        code == 1000
        and len(finals(messages, "AddSegment" if path == speechmatics.AGENT_PATH else "AddTranscript")) == 3
    )
    results = [at for at, m in enumerate(messages) if m["message"] == "SpeakersResult"]
    assert [messages[at] for at in results] == [{"message": "SpeakersResult", "speakers": []}] * 2, messages
    assert results[1] == len(messages) - 2 and messages[-1] == {"message": "EndOfTranscript"}


@pytest.mark.parametrize(
    ("encoding", "rate"), [("mulaw", 8000), ("pcm_f32le", 16000), ("pcm_s16le", 8000), ("pcm_s16le", 44100)]
)
async def test_encodings_and_rates(encoding: str, rate: int) -> None:
    """G.711 mu-law, 32-bit float and other rates decode to the same three commands."""
    samples = fixture_16k(FIXTURE)
    decoder = {"mulaw": "pcmu", "pcm_f32le": "f32le", "pcm_s16le": "s16le"}[encoding]
    data = encoded(samples, decoder, rate)
    first = {**START, "audio_format": {"type": "raw", "encoding": encoding, "sample_rate": rate}}
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), first, data, frame=PcmDecoder(decoder, rate).frame_bytes * rate // 10)
    assert same_words([" ".join(EXPECTED[FIXTURE])], [" ".join(finals(messages))])


def encoded(samples: Any, encoding: str, rate: int) -> bytes:
    """The fixture at `rate` in `encoding`."""
    pcm = np.frombuffer(pcm16(samples, rate), dtype="<i2")
    if encoding == "s16le":
        return pcm.tobytes()
    if encoding == "f32le":
        return (pcm.astype("<f4") / 32768).tobytes()
    return mulaw(pcm)


def mulaw(pcm: Any) -> bytes:
    """G.711 mu-law of 16-bit samples (the standard's segment encoding)."""
    sign = (pcm < 0).astype(np.uint8) << 7
    magnitude = np.minimum(np.abs(pcm.astype(np.int32)), 32635) + 132
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4).astype(np.uint8) | mantissa.astype(np.uint8)) & 0xFF).astype(np.uint8).tobytes()


async def test_additional_vocab_biases_the_decode() -> None:
    """additional_vocab's words, texts or {content, sounds_like}, reach the engine as terms."""
    engine = ContextRecordingEngineDouble()
    vocab = ["Aoife", {"content": "Siobhán", "sounds_like": ["shiv awn"]}]
    async with running_daemon(engine) as daemon:
        await stream(url(daemon), start(additional_vocab=vocab), audio())
    assert set(engine.names[0]) == {"Aoife", "Siobhán"}


async def test_language_in_the_path() -> None:
    """`/v2/en` with language en is the same API; `/v2/de` with language en is refused."""
    async with running_daemon() as daemon:
        same, _ = await stream(url(daemon, "/v2/en"), start(), audio())
        other, code = await stream(url(daemon, "/v2/de"), start())
    assert len(finals(same)) == 3
    assert other[-1]["message"] == "Error" and other[-1]["type"] == "invalid_config" and code == 1008


SPEECHMATICS_CLOSES = {"protocol_error": 1003, "invalid_model": 4004, "job_error": 4013}
"""The Close after an Error of these types (Speechmatics' table of close codes); after the others 1008."""


def close_code_of(kind: str) -> int:
    return SPEECHMATICS_CLOSES.get(kind, 1008)


REFUSALS = [
    (b"\x00\x01", "protocol_error", "StartRecognition"),
    ("not json", "invalid_message", "JSON"),
    ({"message": "AddAudio"}, "protocol_error", "StartRecognition"),
    ({**START, "extra": 1}, "invalid_message", "extra"),
    ({**START, "audio_format": {"type": "file"}}, "invalid_audio_type", "raw"),
    ({**START, "audio_format": {**AUDIO_FORMAT, "encoding": "alaw"}}, "invalid_audio_type", "encoding"),
    ({**START, "audio_format": {**AUDIO_FORMAT, "sample_rate": 4000}}, "invalid_audio_type", "sample_rate"),
    ({**START, "transcription_config": {}}, "invalid_config", "language"),
    (start(language="xx"), "invalid_model", "xx"),
    (start(model="ursa"), "invalid_model", "ursa"),
    (start(diarization="speaker"), "invalid_config", "diarization"),
    (start(speaker_diarization_config={"max_speakers": 2}), "invalid_config", "diarization"),
    (start(domain="finance"), "invalid_config", "domain"),
    (start(enable_entities=True), "invalid_config", "entities"),
    (start(max_delay=9), "invalid_config", "max_delay"),
    (start(conversation_config={"end_of_utterance_silence_trigger": 5}), "invalid_config", "silence"),
    (start(additional_vocab=[{"content": 5}]), "invalid_config", "content"),
    (start(additional_vocab=["x" * 5000]), "invalid_config", "additional_vocab"),
    (start(surprise=True), "invalid_config", "surprise"),
    ({**START, "translation_config": {"target_languages": ["de"]}}, "invalid_config", "translat"),
    ({**START, "audio_events_config": {"types": ["music"]}}, "invalid_config", "audio event"),
    ({**START, "turn_config": {"turn_detection_mode": "vad"}}, "invalid_message", "turn_config"),
]


@pytest.mark.parametrize(("first", "kind", "words"), REFUSALS)
async def test_refused_start(first: Any, kind: str, words: str) -> None:
    """A StartRecognition the daemon cannot take: one Error of Speechmatics' type naming the
    problem, then the Close of that type (1003 protocol_error, 4004 invalid_model, else 1008); nothing else."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), first if isinstance(first, str | bytes) else json.dumps(first))
    assert [m["message"] for m in messages] == ["Error"], messages
    assert messages[0]["type"] == kind and words in messages[0]["reason"], messages
    assert code == close_code_of(kind)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('{"message": "Hello"}', "invalid_message"),
        ('{"message": "StartRecognition"}', "protocol_error"),
        ('{"message": "ForceEndOfUtterance", "timestamp": "soon"}', "invalid_message"),
        ('{"message": "EndOfStream", "last_seq_no": -1}', "invalid_message"),
        ('{"message": "SetRecognitionConfig", "transcription_config": {"language": "de"}}', "invalid_model"),
        ('{"message": "SetRecognitionConfig", "transcription_config": {"max_delay": 0.1}}', "invalid_config"),
        ('{"message": "SetRecognitionConfig", "transcription_config": {"model": "standard"}}', "invalid_config"),
        ('{"message": "GetSpeakers", "final": "yes"}', "invalid_message"),
        ('{"message": "ForceEndOfUtterance", "channel": "1"}', "invalid_message"),
        ('{"message": "EndOfStream", "last_seq_no": 3, "final": true}', "invalid_message"),
        (b"\x00\x01\x02", "invalid_message"),
    ],
)
async def test_refused_message_keeps_the_audio_before_it(message: str | bytes, kind: str) -> None:
    """A bad message after the audio: the finals of the audio before it, then the Error and its Close.
    Audio that is not whole samples is `invalid_message`: Speechmatics no longer sends `data_error`."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), start(), audio(), message)
    assert len(finals(messages)) == 3, messages
    assert messages[-1]["message"] == "Error" and messages[-1]["type"] == kind, messages[-1]
    assert code == close_code_of(kind)


async def test_engine_failure_is_a_warning_and_the_next_final_comes() -> None:
    """An engine that fails one utterance's decode: a Warning (every client ends the session on an
    Error), that utterance's final from its partials, and the next commands' finals."""
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon), start(), audio())
    warnings = of(messages, "Warning")
    assert [w["type"] for w in warnings] == ["job_error"] and not of(messages, "Error"), messages
    assert len(finals(messages)) == 2 and code == 1000 and messages[-1]["message"] == "EndOfTranscript"


async def test_next_partial_waits_for_the_final_before_it() -> None:
    """With two decodes at once, the next command's partial comes after the final before it."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(start()))
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(END)
        messages = [json.loads(message) async for message in ws]
    texts = [
        (m["message"], normalise(m["metadata"]["transcript"]))
        for m in messages
        if m["message"] in ("AddPartialTranscript", "AddTranscript")
    ]
    first_final = next(i for i, (kind, _) in enumerate(texts) if kind == "AddTranscript")
    assert not any({"what", "time"} & set(text.split()) for _, text in texts[:first_final]), texts
    assert any({"what", "time"} & set(text.split()) for _, text in texts[first_final + 1 :])
    assert same_words(EXPECTED[FIXTURE], finals(messages))


KEY = "sm-key"


async def test_the_key_by_bearer_or_jwt_and_refusals_in_speechmatics_shape() -> None:
    """Bearer (the SDKs') and ?jwt= (a browser's) both reach the API; no key or a wrong one: 401 with
    Speechmatics' body at the upgrade; an unknown query parameter: an Error in the stream."""
    async with running_daemon(api_key=KEY) as daemon:
        bearer, _ = await stream(url(daemon), start(), headers={"Authorization": f"Bearer {KEY}"})
        jwt, _ = await stream(url(daemon, query=f"jwt={KEY}&sm-sdk=python-rt-sdk-v1"), start())
        assert bearer[0]["message"] == jwt[0]["message"] == "RecognitionStarted"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    assert response.status == 401
                    body = await response.json()
                    assert body["code"] == 401 and "key" in body["error"]
        unknown, code = await stream(url(daemon, query=f"jwt={KEY}&colour=blue"), start())
    assert unknown == [
        {"message": "Error", "type": "invalid_message", "reason": "colour: unknown query parameter 'colour'"}
    ]
    assert code == 1008


async def test_jwt_is_a_key_on_speechmatics_paths_alone_and_never_echoed() -> None:
    """`?jwt=KEY` passes the key check on /v2, /v2/en and /v2/agent (then 426: a plain GET) and
    nowhere else (Deepgram's /v2/listen included: 401); a wrong one is refused without being quoted."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{daemon.http_port}"
        for path, status in [
            ("/v2", 426),
            ("/v2/en", 426),
            ("/v2/agent", 426),
            ("/v2/listen", 401),
            ("/v1/listen", 401),
        ]:
            async with http.get(f"{base}{path}?jwt={KEY}") as response:
                assert response.status == status, (path, await response.text())
        async with http.get(f"{base}/v2/agent?jwt=not-the-key-7f3a") as response:
            body = await response.text()
            assert response.status == 401 and "7f3a" not in body and json.loads(body)["code"] == 401, body


async def test_plain_get_is_426_in_speechmatics_shape() -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        response = await http.get(f"http://127.0.0.1:{daemon.http_port}/v2/agent")
        assert response.status == 426 and (await response.json())["code"] == 426


async def test_no_start_recognition_in_time_is_an_idle_timeout() -> None:
    """On /v2 an idle_timeout; on /v2/agent, whose Error types have none, its own
    start_recognition_timeout; 1008 after both."""
    async with (
        running_daemon(first_message_timeout_s=1) as daemon,
        websockets.connect(url(daemon)) as ws,
        websockets.connect(url(daemon, speechmatics.AGENT_PATH)) as agent,
    ):
        messages, agents = await read_all(ws), await read_all(agent)
    assert [(m["message"], m["type"]) for m in messages] == [("Error", "idle_timeout")]
    assert [(m["message"], m["type"]) for m in agents] == [("Error", "start_recognition_timeout")]
    assert ws.close_code == agent.close_code == 1008


@pytest.mark.parametrize(
    ("path", "kind", "code"), [(speechmatics.PATH, "idle_timeout", 1008), (speechmatics.AGENT_PATH, "job_error", 4013)]
)
async def test_idle_timeout_after_the_finals(path: str, kind: str, code: int) -> None:
    """Nobody speaks for idle_timeout_s after the commands: their finals, then one Error (/v2's
    idle_timeout; /v2/agent's types have none: job_error) and its Close; nothing after it."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon, path)) as ws:
        await ws.send(json.dumps(start()))
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
        messages = await read_all(ws)
    said = finals(messages, "AddSegment" if path == speechmatics.AGENT_PATH else "AddTranscript")
    assert same_words(EXPECTED[FIXTURE], said), said
    assert [m["type"] for m in of(messages, "Error")] == [kind] and messages[-1]["message"] == "Error", messages
    assert ws.close_code == code


async def test_server_busy_is_a_job_error_and_the_open_session_goes_on() -> None:
    """Over max_sessions: Error job_error (which the clients retry; Speechmatics' quota_exceeded is a
    contract's limit, which Pipecat does not) and 4013; the session already open gets its finals."""
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(start()))
        assert json.loads(await first.recv())["message"] == "RecognitionStarted"
        refused, code = await stream(url(daemon, speechmatics.AGENT_PATH), start())
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await first.send(data[offset : offset + PCM_FRAME_BYTES])
        await first.send(END)
        messages = await read_all(first)
    assert [(m["message"], m["type"]) for m in refused] == [("Error", "job_error")] and code == 4013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and messages[-1] == {"message": "EndOfTranscript"}


async def test_shutdown_sends_the_final_in_progress_then_a_job_error() -> None:
    """Shutdown: the final of the audio that came, then Error job_error (a type Speechmatics sends,
    which the clients retry; `internal_error` is no Error type of its) and 4013; a client still to
    send StartRecognition is closed too."""
    data = audio()
    async with (
        running_daemon() as daemon,
        websockets.connect(url(daemon)) as ws,
        websockets.connect(url(daemon, speechmatics.AGENT_PATH)) as idle,
    ):
        await ws.send(json.dumps(start()))
        await ws.send(data[: len(data) // 4])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages, waiting = await read_all(ws), await read_all(idle)
        await stopping
    assert finals(messages) and messages[-1]["message"] == "Error" and messages[-1]["type"] == "job_error"
    assert ws.close_code == 4013 and waiting[-1]["type"] == "job_error" and idle.close_code == 4013


async def test_agent_next_turn_waits_for_the_segment_before_it() -> None:
    """Agent STT with the service's turns and two decodes at once: the next command's StartOfTurn and
    partial come after the AddSegment and EndOfTurn before it, so each turn's messages stay together."""
    engine = FirstFinalGatedEngineDouble()
    first = {**start(model="linden-1"), "turn_config": {"turn_detection_mode": "vad"}}
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon, speechmatics.AGENT_PATH)) as ws:
        await ws.send(json.dumps(first))
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(END)
        messages = await read_all(ws)
    framing = [k for k in kinds(messages) if k in ("StartOfTurn", "AddSegment", "EndOfTurn")]
    assert framing == ["StartOfTurn", "AddSegment", "EndOfTurn"] * 3, framing
    first_end = next(at for at, message in enumerate(messages) if message["message"] == "EndOfTurn")
    early = [m for m in messages[:first_end] if m["message"] == "AddPartialSegment"]
    assert not any({"what", "time"} & set(normalise(m["segment"]["transcript"]).split()) for m in early), early
    assert same_words(EXPECTED[FIXTURE], finals(messages, "AddSegment"))
