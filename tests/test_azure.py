"""Azure AI Speech's real-time protocol (USP) end to end: real daemon, real Silero, real tiny.en, a raw
WebSocket client for every message and for input no SDK would send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import EXPECTED, FIXTURES, PCM_FRAME_BYTES, fixture_16k, normalise, pcm16, running_daemon, same_words

pytestmark = pytest.mark.timeout(180)

Message = tuple[dict[str, str], dict[str, Any]]
"""A server message: its headers and its JSON body."""
FIXTURE = "three_commands.wav"
INTERACTIVE = "/speech/recognition/interactive/cognitiveservices/v1"
CONVERSATION = "/speech/recognition/conversation/cognitiveservices/v1"
REQUEST_ID = "0123456789abcdef0123456789abcdef"
USP = "USP"
"""The WebSocket subprotocol the Speech SDK offers."""
CONFIG = {"context": {"system": {"name": "SpeechSDK"}, "audio": {"source": {"type": "File"}}}}
CONTEXT = {"phraseDetection": {"language": "en-us"}, "audio": {"streams": {"1": None}}}


def url(daemon: Daemon, path: str = CONVERSATION, query: str = "language=en-US") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{path}{'?' + query if query else ''}"


def text(path: str, body: dict[str, Any] | str, request: str = REQUEST_ID) -> str:
    payload = body if isinstance(body, str) else json.dumps(body)
    return f"Path:{path}\r\nX-RequestId:{request}\r\nContent-Type:application/json\r\n\r\n{payload}"


def audio_message(chunk: bytes, path: str = "audio", request: str = REQUEST_ID) -> bytes:
    headers = f"Path:{path}\r\nX-RequestId:{request}\r\nX-StreamId:1\r\n".encode()
    return len(headers).to_bytes(2, "big") + headers + chunk


def wav_header(rate: int = 16000, tag: int = 1, bits: int = 16, channels: int = 1) -> bytes:
    """A streaming WAV header as the SDK sends it: sizes 0."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return b"RIFF\0\0\0\0WAVEfmt " + len(fmt).to_bytes(4, "little") + fmt + b"data\0\0\0\0"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


def parse(message: str) -> Message:
    head, _, body = message.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n"))
    return headers, json.loads(body)


async def stream(
    target: str,
    data: bytes = b"",
    *after: str | bytes,
    header: bytes | None = wav_header(),
    before: tuple[str | bytes, ...] = (text("speech.config", CONFIG), text("speech.context", CONTEXT)),
    headers: dict[str, str] | None = None,
    frame: int = PCM_FRAME_BYTES,
) -> tuple[list[Message], int | None, str]:
    """`before`, the WAV header, `data` in 100 ms audio messages, the `after` messages (by default
    the empty audio message that ends the turn); every message until the Close, its code and reason."""
    async with websockets.connect(target, additional_headers=headers, subprotocols=[USP]) as ws:
        assert ws.subprotocol == USP, "the SDK's subprotocol is answered"
        reader = asyncio.create_task(read_all(ws))
        for message in (*before, *([] if header is None else [audio_message(header)])):
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(message)
        for offset in range(0, len(data), frame):
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(audio_message(data[offset : offset + frame]))
        for message in after or (audio_message(b""),):
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(message)
        messages = await reader
    return messages, ws.close_code, ws.close_reason or ""


async def read_all(ws: websockets.ClientConnection) -> list[Message]:
    """Every message until the Close, which the client sends after `turn.end`, as the SDK does."""
    messages = []
    with contextlib.suppress(websockets.ConnectionClosedError):
        async for message in ws:
            assert isinstance(message, str), "the server sends text messages only"
            messages.append(parse(message))
            if messages[-1][0]["Path"] == "turn.end":
                await ws.close()
    return messages


def paths(messages: list[Message]) -> list[str]:
    return [headers["Path"] for headers, _ in messages]


def phrases(messages: list[Message], status: str = "Success") -> list[str]:
    return [
        body.get("DisplayText", "")
        for headers, body in messages
        if headers["Path"] == "speech.phrase" and body["RecognitionStatus"] == status
    ]


async def test_continuous_every_message_in_order() -> None:
    """turn.start; per command speech.startDetected, hypotheses, speech.endDetected, one phrase
    (offsets in 100-ns ticks, in order); turn.end last, then a normal Close; every message names the
    turn's request."""
    async with running_daemon() as daemon:
        messages, code, _ = await stream(url(daemon), audio())
    assert code == 1000
    assert paths(messages)[0] == "turn.start" and paths(messages)[-1] == "turn.end"
    assert all(headers["X-RequestId"] == REQUEST_ID for headers, _ in messages)
    said = phrases(messages)
    assert len(said) == 3 and same_words(EXPECTED[FIXTURE], said), said
    per_utterance = [p for p in paths(messages)[1:-1] if p != "speech.hypothesis"]
    assert per_utterance == ["speech.startDetected", "speech.endDetected", "speech.phrase"] * 3, per_utterance
    finals = [body for headers, body in messages if headers["Path"] == "speech.phrase"]
    assert all(body["Duration"] > 0 for body in finals)
    assert [body["Offset"] for body in finals] == sorted(body["Offset"] for body in finals)
    assert finals[-1]["Offset"] > 10_000_000, "ticks: the last command starts seconds in"


async def test_interactive_is_one_phrase_then_turn_end() -> None:
    """The interactive path (recognize_once): the first command's phrase, turn.end, the Close,
    whatever audio follows."""
    async with running_daemon() as daemon:
        messages, code, _ = await stream(url(daemon, INTERACTIVE), audio())
    assert phrases(messages) == phrases(messages)[:1] and len(phrases(messages)) == 1, messages
    assert normalise(phrases(messages)[0]) == normalise(EXPECTED[FIXTURE][0])
    assert paths(messages)[-2:] == ["speech.phrase", "turn.end"] and code == 1000


async def test_interactive_with_no_speech_is_no_match() -> None:
    async with running_daemon() as daemon:
        messages, code, _ = await stream(url(daemon, INTERACTIVE), bytes(32000))
    assert paths(messages) == ["turn.start", "speech.phrase", "turn.end"] and code == 1000
    assert messages[1][1]["RecognitionStatus"] == "NoMatch"


async def test_interactive_no_match_phrase_ends_the_turn() -> None:
    """On the interactive path one phrase, of any status, is the turn (the SDK's `recognize_once`
    takes the first `speech.phrase` as its result): the first command's failed decode is a NoMatch
    phrase, then turn.end and the Close, not the next commands' phrases."""
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code, _ = await stream(url(daemon, INTERACTIVE), audio())
    assert paths(messages).count("speech.phrase") == 1, messages
    assert len(phrases(messages, "NoMatch")) == 1
    assert paths(messages)[-2:] == ["speech.phrase", "turn.end"] and code == 1000


UNIVERSAL = "/speech/universal/v2"


async def test_universal_path_takes_its_settings_from_speech_context() -> None:
    """On `/speech/universal/v2` the SDK sends no query: the mode, language and format are in
    speech.context (`phraseDetection.mode`, `.language`, `phraseOutput.format`), as recognize_once
    with `OutputFormat.Detailed` sends them: one phrase with its NBest, then turn.end; a language
    the engine lacks is refused, not decoded as another."""
    detection = {"mode": "INTERACTIVE", "language": "en-US"}
    context = {"phraseDetection": detection, "phraseOutput": {"format": "Detailed"}}
    async with running_daemon() as daemon:
        messages, code, _ = await stream(
            url(daemon, UNIVERSAL, query=""), audio(), before=(text("speech.context", context),)
        )
        german = {"phraseDetection": {**detection, "language": "de-DE"}}
        _, refused, reason = await stream(
            url(daemon, UNIVERSAL, query=""), audio()[:3200], before=(text("speech.context", german),)
        )
    assert paths(messages).count("speech.phrase") == 1 and paths(messages)[-1] == "turn.end" and code == 1000
    [phrase] = [body for headers, body in messages if headers["Path"] == "speech.phrase"]
    assert normalise(phrase["DisplayText"]) == normalise(EXPECTED[FIXTURE][0]) and phrase["NBest"], phrase
    assert refused == 1007 and reason.startswith("invalid_message: ") and "de-DE" in reason, reason


async def test_detailed_format_gives_nbest() -> None:
    async with running_daemon() as daemon:
        messages, _, _ = await stream(url(daemon, query="language=en-US&format=detailed"), audio())
    finals = [body for headers, body in messages if headers["Path"] == "speech.phrase"]
    assert len(finals) == 3
    for body in finals:
        [best] = body["NBest"]
        assert best["Display"] == body["DisplayText"] and 0 <= best["Confidence"] <= 1
        assert best["Lexical"] == normalise(best["Display"]), best


def f32(rate: int) -> bytes:
    samples = np.frombuffer(audio(rate), dtype="<i2").astype("<f4") / 32768
    return samples.tobytes()


@pytest.mark.parametrize(
    ("header", "data"),
    [
        (wav_header(8000), audio(8000)),
        (wav_header(48000), audio(48000)),
        (wav_header(16000, tag=3, bits=32), f32(16000)),
        (None, audio()),  # no header: 16 kHz 16-bit mono, Azure's default
    ],
    ids=["s16-8k", "s16-48k", "f32-16k", "no-header"],
)
async def test_the_wav_headers_format_is_the_streams(header: bytes | None, data: bytes) -> None:
    async with running_daemon() as daemon:
        messages, code, reason = await stream(url(daemon), data, header=header)
    assert code == 1000, reason
    assert same_words(EXPECTED[FIXTURE], phrases(messages)), phrases(messages)


async def test_phrase_list_reaches_the_engine() -> None:
    context = {**CONTEXT, "dgi": {"Groups": [{"Type": "Generic", "Items": [{"Text": "Ziggy lamp"}, {"Text": " "}]}]}}
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon:
        _, code, _ = await stream(url(daemon), audio()[:32000], before=(text("speech.context", context),))
    assert code == 1000 and engine.names[0] == ("Ziggy lamp",)


@pytest.mark.parametrize(
    ("before", "header", "words"),
    [
        (("Path:speech.config\r\n{}",), wav_header(), "invalid_message: a text message is headers, a blank line"),
        ((text("speech.event", {}),), wav_header(), "invalid_message: unknown Path 'speech.event'"),
        ((text("speech.context", "{"),), wav_header(), "speech.context's body is not JSON"),
        ((text("speech.context", {"dgi": {"Groups": [{"Type": "People"}]}}),), wav_header(), "phrase lists only"),
        ((text("speech.context", {"dgi": {"Groups": [{"Items": [{"Text": 3}]}]}}),), wav_header(), "list of texts"),
        ((b"\x00",), wav_header(), "a 2-byte header length"),
        ((b"\x00\x1dPath:audio\r\nX-RequestId:a\nb\r\n" + wav_header(),), wav_header(), "X-RequestId must be"),
        ((audio_message(b"", path="video"),), wav_header(), "must be Path:audio, not 'video'"),
        ((), wav_header(channels=2), "invalid_audio: this server takes one channel"),
        ((), wav_header(bits=8), "format 1, 8 bits"),
        ((), wav_header(rate=4000), "invalid_audio: the WAV header's format cannot be taken"),
        ((), b"RIFF\0\0\0\0AVI ", "is not WAVE"),
        ((), b"RIFF\0\0\0\0WAVEdata", "no fmt and data chunks"),
    ],
)
async def test_refused_before_the_audio(before: tuple[str | bytes, ...], header: bytes, words: str) -> None:
    """What the client sends before its audio, refused: the Close 1007 (the SDK's BadRequest) with
    the code and the sentence as its reason; nothing else is sent."""
    async with running_daemon() as daemon:
        messages, code, reason = await stream(url(daemon), audio()[:3200], before=before, header=header)
    assert code == 1007 and words in reason, reason
    assert [p for p in paths(messages) if p != "turn.start"] == [], messages


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (text("speech.context", CONTEXT), "speech.context comes before the turn's audio"),
        (text("speech.event", {}), "unknown Path 'speech.event'"),
        (audio_message(b"\x01"), "invalid_audio: 1 bytes is not a whole number of s16le frames"),
        (audio_message(b"", path="video"), "must be Path:audio, not 'video'"),
        (b"\xff\xff", "a 2-byte header length"),
    ],
)
async def test_refused_message_keeps_the_audio_before_it(message: str | bytes, words: str) -> None:
    """A bad message after the audio: the phrases of the audio before it, then the Close 1007."""
    async with running_daemon() as daemon:
        messages, code, reason = await stream(url(daemon), audio(), message)
    assert len(phrases(messages)) == 3, messages
    assert code == 1007 and words in reason, reason


async def test_telemetry_during_the_audio_is_taken() -> None:
    async with running_daemon() as daemon:
        data = audio()
        half = len(data) // 2 // PCM_FRAME_BYTES * PCM_FRAME_BYTES
        messages, code, _ = await stream(
            url(daemon),
            data[:half],
            text("telemetry", {"Metrics": []}),
            *(audio_message(data[at : at + PCM_FRAME_BYTES]) for at in range(half, len(data), PCM_FRAME_BYTES)),
            audio_message(b""),
        )
    assert code == 1000 and same_words(EXPECTED[FIXTURE], phrases(messages))


async def test_engine_failure_is_no_match_and_the_next_phrases_come() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code, _ = await stream(url(daemon), audio())
    assert len(phrases(messages, "NoMatch")) == 1 and len(phrases(messages)) == 2, messages
    assert code == 1000 and paths(messages)[-1] == "turn.end"


async def test_next_hypothesis_waits_for_the_phrase_before_it() -> None:
    """With two decodes at once, the next command's messages come after the phrase before it."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        for message in (text("speech.context", CONTEXT), audio_message(wav_header())):
            await ws.send(message)
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(audio_message(data[offset : offset + PCM_FRAME_BYTES]))
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(audio_message(b""))
        messages = await read_all(ws)
    first_phrase = paths(messages).index("speech.phrase")
    hypotheses = [
        (at, body["Text"]) for at, (headers, body) in enumerate(messages) if headers["Path"] == "speech.hypothesis"
    ]
    assert hypotheses, "paced, the commands' hypotheses come"
    early = [said for at, said in hypotheses if at < first_phrase]
    assert not any({"what", "time"} & set(normalise(said).split()) for said in early), early
    per_utterance = [p for p in paths(messages)[1:-1] if p != "speech.hypothesis"]
    assert per_utterance == ["speech.startDetected", "speech.endDetected", "speech.phrase"] * 3, per_utterance


KEY = "azure-key"


async def test_the_key_by_header_or_bearer_and_refusals_in_azures_shape() -> None:
    """`Ocp-Apim-Subscription-Key` (the SDK's) and `Authorization: Bearer` both reach the API; no key
    or a wrong one: 401 with Azure's body at the upgrade; a bad query: the Close 1007 with its sentence."""
    async with running_daemon(api_key=KEY) as daemon:
        for headers in ({"Ocp-Apim-Subscription-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            messages, code, _ = await stream(url(daemon), headers=headers)
            assert paths(messages) == ["turn.start", "turn.end"] and code == 1000
        taken = "profanity=raw&postprocessing=TrueText&stableIntermediateThreshold=3&wordLevelTimestamps=true"
        messages, code, _ = await stream(url(daemon, query=taken), headers={"Ocp-Apim-Subscription-Key": KEY})
        assert paths(messages) == ["turn.start", "turn.end"] and code == 1000, "checked and not applied"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Ocp-Apim-Subscription-Key": "wrong"}):
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    assert response.status == 401
                    body = await response.json()
                    assert body["error"]["code"] == "401" and "key" in body["error"]["message"]
        keyed = {"Ocp-Apim-Subscription-Key": KEY}
        for query, words in [
            ("language=en-US&colour=blue", "colour: unknown query parameter 'colour'"),
            ("language=tlh", "language: 'tlh' is not one of the languages"),
            ("format=verbose", "format must be simple or detailed"),
            ("cid=my-model", "custom speech models"),
            ("profanity=loud", "profanity must be masked, removed or raw"),
            ("initialSilenceTimeoutMs=soon", "initialSilenceTimeoutMs must be a whole number from 0 to 3600000"),
            ("endSilenceTimeoutMs=\u0661", "endSilenceTimeoutMs must be a whole number"),
            ("storeAudio=maybe", "storeAudio must be true or false"),
            ("postprocessing=Lexical", "postprocessing must be TrueText"),
            ("stableIntermediateThreshold=0", "stableIntermediateThreshold must be a whole number from 1 to 100"),
            ("punctuation=explicit", "this server does not do spoken punctuation"),
        ]:
            messages, code, reason = await stream(url(daemon, query=query), headers=keyed)
            assert messages == [] and code == 1007, (query, reason)
            assert reason.startswith("invalid_query_parameter: ") and words in reason, reason


async def test_the_javascript_sdks_key_and_connection_id_in_the_query_on_azures_paths_alone() -> None:
    """The JavaScript SDK puts the key (a token as `Authorization=Bearer KEY`) and its connection id,
    twice, in the query, a browser's WebSocket having no headers: taken on Azure's paths, the
    universal `/stt/speech/universal/v2` too; elsewhere the key is not one (401); a wrong one 401."""
    connection = "X-ConnectionId=0123456789ABCDEF0123456789ABCDEF&connectionId=0123456789ABCDEF0123456789ABCDEF"
    async with running_daemon(api_key=KEY) as daemon:
        for path, key in [
            (CONVERSATION, f"Ocp-Apim-Subscription-Key={KEY}"),
            ("/stt/speech/universal/v2", f"Ocp-Apim-Subscription-Key={KEY}"),
            (INTERACTIVE, f"Authorization=Bearer%20{KEY}"),
        ]:
            messages, code, _ = await stream(url(daemon, path, f"language=en-US&{key}&{connection}"))
            assert paths(messages)[-1] == "turn.end" and code == 1000, path
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{daemon.http_port}"
            for path, key in [("/v1/listen", KEY), ("/v2", KEY), (CONVERSATION, "not-the-key-7f3a")]:
                async with http.get(f"{base}{path}?Ocp-Apim-Subscription-Key={key}") as response:
                    assert response.status == 401 and "7f3a" not in await response.text(), path
        messages, code, reason = await stream(
            url(daemon, query="X-ConnectionId=a%0Ab"), headers={"Ocp-Apim-Subscription-Key": KEY}
        )
        assert code == 1007 and "X-ConnectionId must be 1 to 64 letters" in reason, reason


async def test_a_browsers_key_subprotocol_is_answered_with_satellite_asr() -> None:
    """A browser sends the key as the subprotocol `satellite-asr.key.KEY` beside `satellite-asr`
    (docs/security.md), and fails the connection unless the server answers one it offered: the
    Azure paths answer `satellite-asr` then, `USP` to the SDK."""
    offered = ["satellite-asr", f"satellite-asr.key.{KEY}"]
    async with running_daemon(api_key=KEY) as daemon, websockets.connect(url(daemon), subprotocols=offered) as ws:
        assert ws.subprotocol == "satellite-asr"
        await ws.send(audio_message(wav_header()))
        await ws.send(audio_message(b""))
        messages = await read_all(ws)
    assert paths(messages) == ["turn.start", "turn.end"] and ws.close_code == 1000


async def test_plain_get_is_426_in_azures_shape() -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        response = await http.get(url(daemon).replace("ws", "http", 1))
        assert response.status == 426 and (await response.json())["error"]["code"] == "426"


async def test_no_audio_in_time_is_a_timeout() -> None:
    """Nothing at all, or the configuration and no audio, within first_message_timeout_s: 1007 timeout."""
    async with (
        running_daemon(first_message_timeout_s=1) as daemon,
        websockets.connect(url(daemon)) as silent,
        websockets.connect(url(daemon)) as configured,
    ):
        await configured.send(text("speech.config", CONFIG))
        assert await read_all(silent) == [] and await read_all(configured) == []
    assert silent.close_code == configured.close_code == 1007
    assert str(silent.close_reason).startswith("timeout: no configuration within 1 s")
    assert str(configured.close_reason).startswith("timeout: no audio within 1 s")


async def test_messages_before_the_audio_do_not_put_off_the_timeout() -> None:
    """Telemetry every 0.4 s and no audio: the connection, which holds no session, is closed
    first_message_timeout_s after connecting (1007 timeout), not kept for as long as messages come."""
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        for _ in range(8):
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(text("telemetry", {"ReceivedMessages": {}}))
            await asyncio.sleep(0.4)
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(audio_message(wav_header()))
            await ws.send(audio_message(b""))
        messages = await read_all(ws)
    assert messages == [] and ws.close_code == 1007, messages
    assert str(ws.close_reason).startswith("timeout: no audio within 1 s of connecting"), ws.close_reason


async def test_idle_timeout_ends_the_turn_after_the_phrases() -> None:
    """Nobody speaks for idle_timeout_s: the phrases, turn.end and 1000, as Azure ends a turn (the
    SDK goes on with a new connection), not a refusal, which would cancel its recognition."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(audio_message(wav_header()))
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(audio_message(data[offset : offset + PCM_FRAME_BYTES]))
        messages = await read_all(ws)
    assert same_words(EXPECTED[FIXTURE], phrases(messages)), messages
    assert paths(messages)[-1] == "turn.end" and ws.close_code == 1000, (ws.close_code, ws.close_reason)


async def test_idle_timeout_on_the_interactive_path_is_no_match() -> None:
    """recognize_once from a microphone nobody speaks into: after idle_timeout_s the turn's answer,
    a NoMatch phrase, then turn.end and 1000 (Azure's initial silence timeout), not a refusal
    (1007, which the SDK reports as BadRequest)."""
    async with running_daemon(idle_timeout_s=1) as daemon, websockets.connect(url(daemon, INTERACTIVE)) as ws:
        await ws.send(audio_message(wav_header()))
        await ws.send(audio_message(bytes(16000)))
        messages = await read_all(ws)
    assert paths(messages) == ["turn.start", "speech.phrase", "turn.end"] and ws.close_code == 1000, messages
    assert messages[1][1]["RecognitionStatus"] == "NoMatch"


def connections_counted(daemon: Daemon) -> list[str]:
    """The address of every connection the daemon's USP handler takes from now on, as it takes it:
    a count of the connections a client opened (a spy on its `ConnectionLimit`, which it still runs)."""
    opened: list[str] = []
    limit = daemon.azure.connections
    take = limit.take

    def counted(address: str) -> None:
        opened.append(address)
        take(address)

    limit.take = counted  # type: ignore[method-assign]
    return opened


def turn_request(number: int) -> str:
    """Turn `number`'s `X-RequestId`: a new one each turn, as the SDK makes them."""
    return f"{number:032x}"


async def send_turn(ws: websockets.ClientConnection, number: int, data: bytes, *, end: bool = True) -> None:
    """A turn as the SDK sends it on an open connection: speech.context under the turn's new
    request id, the WAV header, the audio in 100 ms messages and (with `end`) the empty one."""
    request = turn_request(number)
    await ws.send(text("speech.context", CONTEXT, request))
    await ws.send(audio_message(wav_header(), request=request))
    for offset in range(0, len(data), PCM_FRAME_BYTES):
        await ws.send(audio_message(data[offset : offset + PCM_FRAME_BYTES], request=request))
    if end:
        await ws.send(audio_message(b"", request=request))


async def read_turn(ws: websockets.ClientConnection) -> list[Message]:
    """The server's messages up to and with `turn.end`; the connection stays open."""
    messages: list[Message] = []
    while not messages or messages[-1][0]["Path"] != "turn.end":
        messages.append(parse(str(await asyncio.wait_for(ws.recv(), 60))))
    return messages


def turn_audio(name: str) -> bytes:
    return pcm16(fixture_16k(name), 16000)


async def test_three_turns_on_one_connection() -> None:
    """Continuous recognition turn after turn, as on Azure's connection: each turn is its own
    turn.start ... turn.end under its own request id, with its own phrases and offsets from its
    own start; no Close between turns, and the client's Close at the end is answered 1000."""
    names = ["lights_on.wav", "weather.wav", "timer.wav"]
    async with running_daemon() as daemon, websockets.connect(url(daemon), subprotocols=[USP]) as ws:
        await ws.send(text("speech.config", CONFIG))
        turns = []
        for number, name in enumerate(names, 1):
            await send_turn(ws, number, turn_audio(name))
            turns.append(await read_turn(ws))
        await ws.close()
    assert ws.close_code == 1000
    for number, (name, messages) in enumerate(zip(names, turns, strict=True), 1):
        assert paths(messages)[0] == "turn.start" and paths(messages).count("turn.end") == 1, messages
        assert {headers["X-RequestId"] for headers, _ in messages} == {turn_request(number)}
        assert same_words(EXPECTED[name], phrases(messages)), (name, phrases(messages))
        said = [body for headers, body in messages if headers["Path"] == "speech.phrase"]
        seconds = len(turn_audio(name)) / 32000
        assert all(body["Offset"] + body["Duration"] <= seconds * 10_000_000 for body in said), (
            "offsets from the turn's start"
        )


async def test_recognize_once_twice_on_one_connection() -> None:
    """The interactive path as the SDK's second `recognize_once` on one recognizer uses it: the
    first command's phrase ends turn 1 (the audio after it dropped), the client's telemetry, then
    turn 2's messages under a new request id bring the next command's phrase, on the same connection."""
    async with running_daemon() as daemon, websockets.connect(url(daemon, INTERACTIVE), subprotocols=[USP]) as ws:
        data = audio()
        await send_turn(ws, 1, data[: len(data) // 2 // PCM_FRAME_BYTES * PCM_FRAME_BYTES], end=False)
        first = await read_turn(ws)
        await ws.send(text("telemetry", {"Metrics": []}, turn_request(1)))
        await ws.send(audio_message(data[:PCM_FRAME_BYTES], request=turn_request(1)))  # sent before it saw turn.end
        await send_turn(ws, 2, turn_audio("weather.wav"), end=False)
        second = await read_turn(ws)
        await ws.close()
    assert phrases(first) == phrases(first)[:1] and normalise(phrases(first)[0]) == normalise(EXPECTED[FIXTURE][0])
    assert [normalise(p) for p in phrases(second)] == [normalise(EXPECTED["weather.wav"][0])], second
    assert {headers["X-RequestId"] for headers, _ in second} == {turn_request(2)}
    assert paths(second)[0] == "turn.start"


async def test_a_refusal_in_turn_two_keeps_turn_ones_phrases() -> None:
    """Turn 2's bad speech.context is refused (1007 with the sentence) after turn 1 had all its
    phrases; a bad message during turn 2's audio gets that audio's phrases first."""
    bad_context = text("speech.context", {"dgi": {"Groups": [{"Type": "Grammar"}]}}, turn_request(2))
    async with running_daemon() as daemon:
        async with websockets.connect(url(daemon), subprotocols=[USP]) as ws:
            await send_turn(ws, 1, turn_audio("lights_on.wav"))
            first = await read_turn(ws)
            await ws.send(bad_context)
            refused = await read_all(ws)
        async with websockets.connect(url(daemon), subprotocols=[USP]) as during:
            await send_turn(during, 1, turn_audio("lights_on.wav"))
            await read_turn(during)
            await send_turn(during, 2, turn_audio("weather.wav"), end=False)
            await during.send(text("speech.event", {}, turn_request(2)))
            second = await read_all(during)
    assert same_words(EXPECTED["lights_on.wav"], phrases(first)), first
    assert refused == [] and ws.close_code == 1007, (ws.close_code, ws.close_reason)
    assert str(ws.close_reason).startswith("invalid_message: this server takes phrase lists only")
    assert same_words(EXPECTED["weather.wav"], phrases(second)) and during.close_code == 1007, second
    assert "unknown Path 'speech.event'" in str(during.close_reason)


async def test_many_turns_hold_one_session_at_a_time() -> None:
    """With max_sessions 1, eight turns on one connection (continuous and interactive, ended by the
    client or by the phrase) each get the one session: a turn's session is released as it ends,
    none leaks, and between turns the connection holds none (another client's turn is served)."""
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon), subprotocols=[USP]) as ws,
        websockets.connect(url(daemon, INTERACTIVE), subprotocols=[USP]) as once,
    ):
        for number in range(1, 5):
            await send_turn(ws, number, bytes(6400))
            assert paths(await read_turn(ws)) == ["turn.start", "turn.end"]
            await send_turn(once, number, turn_audio("lights_on.wav"), end=False)
            assert len(phrases(await read_turn(once))) == 1
            assert len(daemon.core.sessions) == 0, "the phrase's session is released before turn.end"
            await once.send(text("telemetry", {}, turn_request(number)))
        other, code, _ = await stream(url(daemon), turn_audio("weather.wav"))
        assert len(daemon.core.sessions) == 0
    assert code == 1000 and same_words(EXPECTED["weather.wav"], phrases(other)), other


async def test_idle_between_turns_closes_1000_after_idle_timeout() -> None:
    """No turn for idle_timeout_s after a turn: the Close 1000 `idle_timeout`, as the daemon ends an
    idle turn, holding no session meanwhile; a turn begun before that is served."""
    async with (
        running_daemon(idle_timeout_s=2, first_message_timeout_s=30) as daemon,
        websockets.connect(url(daemon), subprotocols=[USP]) as ws,
    ):
        await send_turn(ws, 1, turn_audio("lights_on.wav"))
        await read_turn(ws)
        await ws.send(text("telemetry", {}, turn_request(1)))
        await asyncio.sleep(1.2)
        await send_turn(ws, 2, turn_audio("weather.wav"))
        second = await read_turn(ws)
        assert len(daemon.core.sessions) == 0
        ended = asyncio.get_running_loop().time()
        assert await read_all(ws) == []
        waited = asyncio.get_running_loop().time() - ended
    assert same_words(EXPECTED["weather.wav"], phrases(second)), second
    assert ws.close_code == 1000 and ws.close_reason == "idle_timeout", (ws.close_code, ws.close_reason)
    assert 1.5 < waited < 6, waited


async def test_telemetry_and_late_audio_between_turns_do_not_put_the_idle_timeout_off() -> None:
    """Between turns the connection holds no session: telemetry and the ended turn's audio, which
    start no turn, sent every 0.3 s do not keep it open past idle_timeout_s of the turn's end."""
    async with (
        running_daemon(idle_timeout_s=1.5, first_message_timeout_s=30) as daemon,
        websockets.connect(url(daemon), subprotocols=[USP]) as ws,
    ):
        await send_turn(ws, 1, bytes(6400))
        assert paths(await read_turn(ws)) == ["turn.start", "turn.end"]
        ended = asyncio.get_running_loop().time()
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(20):  # 6 s
                await ws.send(text("telemetry", {}, turn_request(1)))
                await ws.send(audio_message(bytes(3200), request=turn_request(1)))
                await asyncio.sleep(0.3)
        closed = asyncio.get_running_loop().time() - ended
        assert await read_all(ws) == []
    assert ws.close_code == 1000 and ws.close_reason == "idle_timeout", (ws.close_code, ws.close_reason)
    assert closed < 4, closed


async def test_a_later_turn_without_audio_is_a_timeout_from_its_first_message() -> None:
    """Turn 2's speech.context and no audio: the Close 1007 `timeout` first_message_timeout_s after
    that message (not after connecting), turn 1's phrases sent before it."""
    async with (
        running_daemon(first_message_timeout_s=1) as daemon,
        websockets.connect(url(daemon), subprotocols=[USP]) as ws,
    ):
        await send_turn(ws, 1, turn_audio("lights_on.wav"))
        first = await read_turn(ws)
        await asyncio.sleep(1.2)
        await ws.send(text("speech.context", CONTEXT, turn_request(2)))
        assert await read_all(ws) == []
    assert same_words(EXPECTED["lights_on.wav"], phrases(first)), first
    assert ws.close_code == 1007, (ws.close_code, ws.close_reason)
    assert str(ws.close_reason).startswith("timeout: no audio within 1 s of the turn's first message")


async def test_the_interactive_phrase_frees_the_session_before_turn_end() -> None:
    """With max_sessions 1, another client connecting as soon as the interactive path's `turn.end`
    came gets the one session, though the first client's audio (one message, paced by
    max_feed_ahead_s) is still being read: the turn's session is released before `turn.end` goes out."""
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0, max_feed_ahead_s=1) as daemon,
        websockets.connect(url(daemon, INTERACTIVE), subprotocols=[USP]) as once,
    ):
        await once.send(text("speech.context", CONTEXT, turn_request(1)))
        await once.send(audio_message(wav_header() + audio(), request=turn_request(1)))
        first = await read_turn(once)
        other, code, reason = await stream(url(daemon), turn_audio("weather.wav"))
    assert same_words(EXPECTED[FIXTURE][:1], phrases(first)), first
    assert code == 1000 and same_words(EXPECTED["weather.wav"], phrases(other)), (code, reason, other)


async def test_the_clients_end_arriving_with_the_interactive_phrase_leaves_the_next_turn_whole() -> None:
    """Turn 1's audio and its empty end message sent at once on the interactive path: its phrase and
    its client's end meet; one turn.end, then turn 2 (at microphone pace, longer than
    idle_timeout_s but never quiet that long) runs to its own turn.end: nothing of turn 1's end
    (its turn.end's wake-up) is left to cut it."""
    async with (
        running_daemon(idle_timeout_s=2.5) as daemon,
        websockets.connect(url(daemon, INTERACTIVE), subprotocols=[USP]) as ws,
    ):
        await send_turn(ws, 1, turn_audio("lights_on.wav"))
        first = await read_turn(ws)
        request = turn_request(2)
        await ws.send(text("speech.context", CONTEXT, request))
        await ws.send(audio_message(wav_header(), request=request))
        data = turn_audio("weather.wav")
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(audio_message(data[offset : offset + PCM_FRAME_BYTES], request=request))
            await asyncio.sleep(0.1)
        second = await read_turn(ws)
    assert paths(first).count("turn.end") == 1 and same_words(EXPECTED["lights_on.wav"], phrases(first)), first
    assert same_words(EXPECTED["weather.wav"], phrases(second)), second


async def test_server_busy_is_1011_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(audio_message(wav_header()))
        assert paths([parse(str(await first.recv()))]) == ["turn.start"]
        refused, code, reason = await stream(url(daemon, INTERACTIVE))
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await first.send(audio_message(data[offset : offset + PCM_FRAME_BYTES]))
        await first.send(audio_message(b""))
        messages = await read_all(first)
    assert refused == [] and code == 1011 and reason.startswith("server_busy: "), reason
    assert same_words(EXPECTED[FIXTURE], phrases(messages)) and paths(messages)[-1] == "turn.end"


async def test_shutdown_as_a_later_turns_first_audio_is_read_sends_its_phrases_then_1011() -> None:
    """Shutdown while turn 2's first audio message (the WAV header and all its audio in one, read at
    max_feed_ahead_s's pace) is still being read: its session is open, so the phrases of the
    audio that came go out before the Close 1011, as in any turn's audio."""
    async with running_daemon(max_feed_ahead_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        await send_turn(ws, 1, bytes(6400))
        assert paths(await read_turn(ws)) == ["turn.start", "turn.end"]
        await ws.send(text("speech.context", CONTEXT, turn_request(2)))
        await ws.send(audio_message(wav_header() + audio(), request=turn_request(2)))
        await asyncio.sleep(4)  # about 5 s read: command 2 (4.1 to 5.1 s) in progress, its phrase due to shutdown
        await daemon.stop()
        messages = await read_all(ws)
    assert ws.close_code == 1011, (ws.close_code, ws.close_reason)
    assert len(phrases(messages)) >= 2, messages


async def test_shutdown_reaches_connections_whose_turn_the_server_ended() -> None:
    """Shutdown closes 1011 a connection between turns whose turn the server ended (the interactive
    path's phrase, the idle timeout), as one whose client ended it: none holds a session."""
    async with (
        running_daemon(idle_timeout_s=3) as daemon,
        websockets.connect(url(daemon, INTERACTIVE)) as once,
        websockets.connect(url(daemon)) as idle,
    ):
        await send_turn(idle, 1, bytes(6400), end=False)
        await asyncio.sleep(2)  # each ends its turn 3 s or more before its idle Close
        await send_turn(once, 1, turn_audio("lights_on.wav"), end=False)
        assert paths(await read_turn(idle)) == ["turn.start", "turn.end"]
        assert len(phrases(await read_turn(once))) == 1
        await daemon.stop()
        after = await read_all(once), await read_all(idle)
    assert after == ([], [])
    assert once.close_code == idle.close_code == 1011, (once.close_code, idle.close_code)
    assert (
        str(once.close_reason) == str(idle.close_reason) == "shutdown: the server is shutting down; start a new session"
    )


async def test_shutdown_sends_the_phrase_in_progress_then_1011() -> None:
    """Shutdown: the phrase of the audio that came, then the Close 1011 with the sentence; a client
    still to send its audio is closed too, and one between turns (it holds no session)."""
    data = audio()
    async with (
        running_daemon() as daemon,
        websockets.connect(url(daemon)) as ws,
        websockets.connect(url(daemon)) as waiting,
        websockets.connect(url(daemon)) as between,
    ):
        await send_turn(between, 1, bytes(6400))
        assert paths(await read_turn(between)) == ["turn.start", "turn.end"]
        await waiting.send(text("speech.config", CONFIG))
        await ws.send(audio_message(wav_header()))
        await ws.send(audio_message(data[: len(data) // 4]))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages, idle, after = await read_all(ws), await read_all(waiting), await read_all(between)
        await stopping
    assert phrases(messages) and idle == after == []
    assert ws.close_code == waiting.close_code == between.close_code == 1011
    assert (
        str(ws.close_reason)
        == str(waiting.close_reason)
        == str(between.close_reason)
        == "shutdown: the server is shutting down; start a new session"
    )


REST_HEADERS = {"Content-Type": "audio/wav; codecs=audio/pcm; samplerate=16000"}


async def post(daemon: Daemon, body: bytes, query: str = "language=en-US", **headers: str) -> tuple[int, Any]:
    target = url(daemon, query=query).replace("ws", "http", 1)
    async with aiohttp.ClientSession() as http, http.post(target, data=body, headers={**REST_HEADERS, **headers}) as r:
        return r.status, await r.json()


async def test_rest_short_audio_is_one_phrase_simple_or_detailed() -> None:
    """The REST API for short audio: the file's commands as one phrase, offsets in ticks; with
    `format=detailed` its `NBest`; silence is `NoMatch`."""
    wav = (FIXTURES / FIXTURE).read_bytes()
    async with running_daemon() as daemon:
        status, simple = await post(daemon, wav)
        _, detailed = await post(daemon, wav, "language=en-US&format=detailed")
        _, silent = await post(daemon, wav_header() + bytes(32000))
    assert status == 200 and simple["RecognitionStatus"] == "Success", simple
    assert same_words([" ".join(EXPECTED[FIXTURE])], [simple["DisplayText"]]), simple
    assert simple["Offset"] > 0 and simple["Duration"] > 30_000_000 and "NBest" not in simple
    assert detailed["NBest"][0]["Display"] == detailed["DisplayText"] == simple["DisplayText"]
    assert silent["RecognitionStatus"] == "NoMatch" and silent["Duration"] == 10_000_000, silent


async def test_rest_refusals_in_azures_body() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        keyed = {"Ocp-Apim-Subscription-Key": KEY}
        wav = (FIXTURES / "lights_on.wav").read_bytes()
        assert (await post(daemon, wav))[0] == 401
        status, body = await post(daemon, wav, "format=verbose", **keyed)
        assert status == 400 and body["error"]["code"] == "400", body
        assert body["error"]["message"].startswith("invalid_query_parameter: format: format must be simple or detailed")
        status, body = await post(daemon, b"not audio at all", **keyed)
        assert status == 400 and body["error"]["message"].startswith("invalid_file: the file is not audio"), body
        status, body = await post(daemon, wav, **{**keyed, "Content-Type": "text/plain"})
        assert status == 415 and body["error"]["message"].startswith("unsupported_media_type: "), body
