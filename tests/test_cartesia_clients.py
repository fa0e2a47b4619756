"""Cartesia's streaming speech-to-text API (`/stt/websocket`) with the three real Cartesia clients,
against the real daemon (real Silero, real tiny.en): the official SDK (cartesia's
`stt.manual_finalize.websocket`, and `auto_finalize` for the turns API), LiveKit's `cartesia.STT`
stream (with `ink-whisper` on `/stt/websocket`, with its default `ink-2` on the turns API
`/stt/turns/websocket`) and Pipecat's `CartesiaSTTService` and `CartesiaTurnsSTTService` behind its
own Silero VAD. Each is pointed at the daemon on
127.0.0.1 and fed three_commands.wav at microphone pace, with the key as it sends it. Each client
parses the messages its own way and sends the query parameters it sends: these tests are where a
field the daemon leaves out or mistypes, or a parameter it refuses, shows."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cartesia import AsyncCartesia
from cartesia.types.stt import (
    STTAutoFinalizeConnected,
    STTAutoFinalizeTurnEnd,
    STTAutoFinalizeTurnStart,
    STTAutoFinalizeTurnUpdate,
    STTManualFinalizeDoneResponse,
    STTManualFinalizeFlushDoneResponse,
    STTManualFinalizeTranscriptResponse,
)
from cartesia.types.stt_error_response import STTErrorResponse
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError
from livekit.plugins import cartesia as lk_cartesia
from pipecat.services.cartesia.stt import CartesiaSTTService
from pipecat.services.cartesia.turns.stt import CartesiaTurnsSTTService
from pipecat.transcriptions.language import Language
from websockets.exceptions import InvalidStatus

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.engines.base import Engine
from satellite_asr.server import Daemon
from tests.certificates import self_signed
from tests.doubles import ContextRecordingEngineDouble, CrashingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.livekit_events import LiveKitEvents, pushed
from tests.test_pipecat import refused, running_pipeline, speak

pytestmark = pytest.mark.timeout(180)

KEY = "cartesia-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1
"""100 ms of audio a message, as Cartesia's docs advise and a microphone delivers it."""
FINALIZE_AT_S = 1.2
"""Where the SDK's `finalize` is sent: in the first command ("turn off the bedroom lights"), which
the daemon would end at about 2 s."""


def sdk_client(daemon: Daemon, api_key: str = KEY) -> AsyncCartesia:
    return AsyncCartesia(api_key=api_key, base_url=f"http://127.0.0.1:{daemon.http_port}")


async def sdk_session(
    daemon: Daemon, *, finalize_at: float | None = None, fixture: str = FIXTURE, api_key: str = KEY, **options: Any
) -> list[Any]:
    """One SDK connection (16 kHz PCM, ink-whisper, `options` on top): the fixture in 100 ms
    messages at microphone pace, `finalize` after `finalize_at` seconds of it if asked and at the
    end, then `close`; every event the SDK parsed, to the end of the stream."""
    audio = pcm16(fixture_16k(fixture), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    settings: Any = {"encoding": "pcm_s16le", "model": "ink-whisper", "sample_rate": SAMPLE_RATE}
    events: list[Any] = []
    async with sdk_client(daemon, api_key).stt.manual_finalize.websocket(**settings, **options) as connection:

        async def read() -> None:
            async for event in connection:
                events.append(event)

        reading = asyncio.create_task(read())
        for offset in range(0, len(audio), step):
            await connection.send_raw(audio[offset : offset + step])
            await asyncio.sleep(FRAME_S)
            if finalize_at is not None and offset + step == int(finalize_at * SAMPLE_RATE) * 2:
                await connection.send("finalize")
        await connection.send("finalize")
        await connection.send("close")
        async with asyncio.timeout(60):
            await reading
    return events


def sdk_finals(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, STTManualFinalizeTranscriptResponse) and e.is_final]


async def test_sdk_streams_typed_transcripts_whose_final_deltas_make_the_transcript() -> None:
    """Every message parses as the SDK's model of it: partials and finals (deltas: the finals
    concatenated as the SDK's docs say are the three commands), words spanning each utterance in
    order, the language; the last `finalize`'s `flush_done`, then `close`'s `done`."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await sdk_session(daemon, language="en")
    assert isinstance(events[-2], STTManualFinalizeFlushDoneResponse)
    assert isinstance(events[-1], STTManualFinalizeDoneResponse)
    transcripts = [e for e in events if isinstance(e, STTManualFinalizeTranscriptResponse)]
    assert len(transcripts) == len(events) - 2, "nothing else: no error"
    assert any(not t.is_final for t in transcripts), "partials come as transcripts not final"
    finals = sdk_finals(events)
    assert same_words(EXPECTED[FIXTURE], finals)
    assert all(text.startswith(" ") for text in finals[1:]), "deltas after the first final"
    seconds = fixture_16k(FIXTURE).size / SAMPLE_RATE
    previous_end = 0.0
    for final in [t for t in transcripts if t.is_final]:
        assert final.language == "en" and final.words is not None and final.duration is not None
        assert [w.word for w in final.words] == final.text.split()
        for word in final.words:
            assert previous_end <= word.start <= word.end <= seconds + 0.1, (previous_end, word)
        previous_end = final.words[-1].end
    assert sum(t.duration or 0.0 for t in transcripts) <= seconds + 0.1


def letter(event: Any) -> str:
    """An SDK event as a letter: p a partial, F a final, f flush_done, D done, E an error."""
    if isinstance(event, STTManualFinalizeTranscriptResponse):
        return "F" if event.is_final else "p"
    kinds = {STTManualFinalizeFlushDoneResponse: "f", STTManualFinalizeDoneResponse: "D", STTErrorResponse: "E"}
    return kinds[type(event)]


async def test_sdk_finalize_ends_the_command_there_and_is_answered_after_its_final() -> None:
    """A `finalize` mid-command: that command's final, ending where the audio sent had got to, then
    `flush_done`; the rest of the stream is transcribed as before."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await sdk_session(daemon, finalize_at=FINALIZE_AT_S)
    kinds = "".join(letter(event) for event in events)
    assert re.fullmatch(r"p*Ffp+F(p+F)+fD", kinds), kinds
    forced, *rest = sdk_finals(events)
    assert forced.lower().startswith("turn off") and same_words(EXPECTED[FIXTURE][1:], rest[-2:])
    first = next(e for e in events if isinstance(e, STTManualFinalizeTranscriptResponse) and e.is_final)
    assert first.words and first.words[-1].end <= FINALIZE_AT_S + FRAME_S


async def test_sdk_keyterms_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        events = await sdk_session(daemon, fixture="lights_on.wav", keyterm=["Aoife", "Calloway"], min_volume=0.1)
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names), engine.names
    assert same_words(EXPECTED["lights_on.wav"], sdk_finals(events))


async def test_sdk_connect_raises_the_keys_refusal_and_yields_a_refused_querys_error() -> None:
    """A wrong key: the handshake's 401; an encoding the daemon does not decode: the error event
    naming the parameter, which the SDK parses as its STTErrorResponse, then the Close."""
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(InvalidStatus) as wrong:
            await sdk_session(daemon, api_key="wrong")
        settings: Any = {"encoding": "pcm_s32le", "model": "ink-whisper", "sample_rate": SAMPLE_RATE}
        async with sdk_client(daemon).stt.manual_finalize.websocket(**settings) as refused:
            event = await asyncio.wait_for(refused.recv(), 60)
    assert wrong.value.response.status_code == 401
    assert isinstance(event, STTErrorResponse) and event.message and event.message.startswith("encoding: "), event


async def test_sdk_parses_the_busy_error_event() -> None:
    """The one session slot taken: the SDK parses the `error` event as its STTErrorResponse."""
    async with running_daemon(api_key=KEY, max_sessions=1, wyoming_reserved_sessions=0) as daemon:
        settings: Any = {"encoding": "pcm_s16le", "model": "ink-whisper", "sample_rate": SAMPLE_RATE}
        async with sdk_client(daemon).stt.manual_finalize.websocket(**settings) as holding:
            await holding.send_raw(bytes(3200))
            async with sdk_client(daemon).stt.manual_finalize.websocket(**settings) as refused:
                event = await asyncio.wait_for(refused.recv(), 60)
    assert isinstance(event, STTErrorResponse), event
    assert event.status_code == 503 and event.error_code == "server_busy" and event.message


async def livekit_stream(stt: lk_cartesia.STT, done: Callable[[LiveKitEvents], bool]) -> LiveKitEvents:
    """The fixture streamed through a LiveKit STT in 100 ms frames at microphone pace, then `flush`
    (its `finalize`), until `done`; then `end_input` (its `close`) and the stream read to its end.
    No retries: an error from the stream fails the test."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    errors: list[Any] = []
    stt.on("error", errors.append)
    stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
    events = LiveKitEvents(stream)
    try:
        for offset in range(0, len(audio), step):
            if not pushed(stream, audio[offset : offset + step]):  # the stream failed
                break
            await asyncio.sleep(FRAME_S)
        else:
            stream.flush()
        async with asyncio.timeout(60):
            while not done(events) and not events.reading.done():
                events.changed.clear()
                await asyncio.wait(
                    (asyncio.ensure_future(events.changed.wait()), events.reading), return_when=asyncio.FIRST_COMPLETED
                )
        if not events.reading.done():
            stream.end_input()
        async with asyncio.timeout(60):
            await events.reading
    finally:
        await stream.aclose()
        await stt.aclose()
    assert errors == []
    return events


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: Any) -> lk_cartesia.STT:
    base_url = f"http://127.0.0.1:{daemon.http_port}"
    return lk_cartesia.STT(model="ink-whisper", base_url=base_url, api_key=api_key, http_session=http, **options)


def livekit_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What LiveKit's Cartesia plugin logged at WARNING or above: an error message it got, a
    message type it does not know, a message it failed on."""
    return [record.getMessage() for record in caplog.records if record.name.startswith("livekit.plugins.cartesia")]


@pytest.mark.parametrize("language", [None, "en"], ids=["no language", "en"])
async def test_livekit_stream_gets_a_speech_per_command_with_aligned_words(
    caplog: pytest.LogCaptureFixture, language: str | None
) -> None:
    """Each final ends a speech in LiveKit: START, interims, the final and END per command; each
    final carries its words (LiveKit's aligned transcript), within the stream's audio and in order."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.cartesia")
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, language=language) if language else livekit_stt(daemon, http)
        assert stt.capabilities.aligned_transcript == "word"
        events = await livekit_stream(stt, lambda events: len(events.finals()) >= 3)
    assert livekit_log(caplog) == []
    assert re.fullmatch(r"(Si+FE){3}", events.turns()), events.turns()
    finals = events.finals()
    assert same_words(EXPECTED[FIXTURE], [final.text for final in finals])
    seconds = fixture_16k(FIXTURE).size / SAMPLE_RATE
    previous_end = 0.0
    for final in finals:
        assert final.words is not None
        assert [str(word) for word in final.words] == final.text.split()
        for word in final.words:
            assert previous_end <= word.start_time <= word.end_time <= seconds + 0.1, (previous_end, word)
        previous_end = final.words[-1].end_time


async def test_livekit_stream_fails_with_the_keys_status_and_logs_a_refused_querys_sentence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong key: the 401; a sample rate the daemon does not take: the error event, whose
    sentence LiveKit logs, then the Close that fails the stream (no retries here)."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.cartesia")
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(APIStatusError) as wrong:
            await livekit_stream(livekit_stt(daemon, http, "wrong"), lambda events: False)
        with pytest.raises(APIConnectionError):
            await livekit_stream(livekit_stt(daemon, http, sample_rate=96000), lambda events: False)
    assert wrong.value.status_code == 401
    [logged] = [getattr(r, "lk.pii.data") for r in caplog.records if r.getMessage() == "cartesia sent an error"]
    assert logged["status_code"] == 400 and logged["message"].startswith("sample_rate: "), logged


@asynccontextmanager
async def tls_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine | None = None
) -> AsyncIterator[Daemon]:
    """The daemon serving TLS with a certificate of its own for 127.0.0.1, which Pipecat trusts as
    an agent would: `SSL_CERT_FILE` names it. Pipecat connects with `wss://` to a bare host."""
    cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert))
    async with running_daemon(engine, api_key=KEY, tls_cert=str(cert.cert), tls_key=str(cert.key)) as daemon:
        yield daemon


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000], ids=["16 kHz", "8 kHz"])
async def test_pipecat_service_over_wss_finalizes_at_its_vads_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int
) -> None:
    """Pipecat's defaults (ink-whisper, `en`, its pipeline's rate) on a bare host, so `wss://`: a
    final per command, partials as interims; its `finalize` at each stop of its VAD is answered
    without an error."""
    async with (
        tls_daemon(tmp_path, monkeypatch) as daemon,
        running_pipeline(CartesiaSTTService(api_key=KEY, base_url=f"127.0.0.1:{daemon.http_port}"), rate) as (
            worker,
            frames,
        ),
    ):
        await speak(worker, FIXTURE, rate)
        await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    assert frames.interims, "partials reach Pipecat as interim transcripts"


async def test_pipecat_service_sends_its_keyterms_and_language() -> None:
    """An ink-2 model (Pipecat sends keyterms only for it), keyterms with a space and an `&`, over
    `ws://`: the keyterms bias every decode, `Language.EN` is the decode language, and the
    transcripts carry it."""
    engine = ContextRecordingEngineDouble()
    settings = CartesiaSTTService.Settings(model="ink-2", language=Language.EN, keyterm=["Aoife Calloway", "Zoë & Co"])
    async with running_daemon(engine, api_key=KEY) as daemon:
        stt = CartesiaSTTService(api_key=KEY, base_url=f"ws://127.0.0.1:{daemon.http_port}", settings=settings)
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    assert engine.names and all(names[:2] == ("Aoife Calloway", "Zoë & Co") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


async def test_pipecat_service_reports_the_sentence_of_a_refused_setting() -> None:
    """A language the daemon's engine does not have: the daemon's sentence naming it reaches the
    pipeline's error, as Cartesia's in-band refusal does; an HTTP refusal would show Pipecat's
    "HTTP 400" alone."""
    settings = CartesiaSTTService.Settings(language=Language.FR)
    async with running_daemon(api_key=KEY) as daemon:
        stt = CartesiaSTTService(api_key=KEY, base_url=f"ws://127.0.0.1:{daemon.http_port}", settings=settings)
        async with running_pipeline(stt) as (_worker, frames):
            await frames.wait_for(errors=1)
    assert "language: 'fr' is not one of the languages of this engine" in frames.errors[0], frames.errors


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await refused(CartesiaSTTService(api_key="wrong", base_url=f"ws://127.0.0.1:{daemon.http_port}"))
    assert "HTTP 401" in frames.errors[0], frames.errors


# --- the turns API (`/stt/turns/websocket`) ------------------------------------------------------


async def test_sdk_auto_finalize_gets_a_typed_turn_per_command() -> None:
    """The SDK's `auto_finalize` websocket (ink-2) with its thresholds and keyterms: every event
    parses as its model; `connected`, then per command `turn.start`, updates and `turn.end`; its
    `close` command ends the stream after the last turn."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    options: Any = {"turn_start_threshold": 0.8, "turn_end_threshold": 0.2, "keyterm": ["Aoife"]}
    events: list[Any] = []
    async with (
        running_daemon(api_key=KEY) as daemon,
        sdk_client(daemon).stt.auto_finalize.websocket(
            encoding="pcm_s16le", model="ink-2", sample_rate=SAMPLE_RATE, **options
        ) as connection,
    ):

        async def read() -> None:
            async for event in connection:
                events.append(event)

        reading = asyncio.create_task(read())
        for offset in range(0, len(audio), step):
            await connection.send_raw(audio[offset : offset + step])
            await asyncio.sleep(FRAME_S)
        await connection.send({"type": "close"})
        async with asyncio.timeout(60):
            await reading
    letters = {
        STTAutoFinalizeConnected: "C",
        STTAutoFinalizeTurnStart: "S",
        STTAutoFinalizeTurnUpdate: "u",
        STTAutoFinalizeTurnEnd: "E",
    }
    kinds = "".join(letters[type(event)] for event in events)
    assert re.fullmatch(r"C(Su+E){3}", kinds), kinds
    finals = [event.transcript for event in events if isinstance(event, STTAutoFinalizeTurnEnd)]
    assert same_words(EXPECTED[FIXTURE], finals)


async def test_livekit_stream_with_its_default_model_gets_a_speech_per_turn(caplog: pytest.LogCaptureFixture) -> None:
    """LiveKit's default (`ink-2`, the turns API): START, interims, the final and END per command."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.cartesia")
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = lk_cartesia.STT(base_url=f"http://127.0.0.1:{daemon.http_port}", api_key=KEY, http_session=http)
        assert stt.model == "ink-2"
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
        events = LiveKitEvents(stream)
        try:
            for offset in range(0, len(audio), step):
                data = audio[offset : offset + step]
                stream.push_frame(rtc.AudioFrame(data, SAMPLE_RATE, 1, len(data) // 2))
                await asyncio.sleep(FRAME_S)
            stream.end_input()
            async with asyncio.timeout(60):
                await events.reading
        finally:
            await stream.aclose()
            await stt.aclose()
    assert livekit_log(caplog) == []
    assert re.fullmatch(r"(Si+FE){3}", events.turns()), events.turns()
    assert same_words(EXPECTED[FIXTURE], [final.text for final in events.finals()])


async def test_livekit_turns_stream_reads_past_an_engine_failure_and_keeps_each_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every final decode fails (the keyterm `crash` makes the engine double raise): each failure is
    an error event LiveKit logs and reads past, and each turn still ends with the text its partials
    were sure of; an error of 500 or more would have made LiveKit drop the connection (no retries
    here: the stream fails) and lose the turns in flight."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.cartesia")
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    async with running_daemon(CrashingEngineDouble(), api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        base_url = f"http://127.0.0.1:{daemon.http_port}"
        stt = lk_cartesia.STT(base_url=base_url, api_key=KEY, http_session=http, keyterm=["crash"])
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
        events = LiveKitEvents(stream)
        try:
            for offset in range(0, len(audio), step):
                data = audio[offset : offset + step]
                stream.push_frame(rtc.AudioFrame(data, SAMPLE_RATE, 1, len(data) // 2))
                await asyncio.sleep(FRAME_S)
            stream.end_input()
            async with asyncio.timeout(60):
                await events.reading
        finally:
            await stream.aclose()
            await stt.aclose()
    assert re.fullmatch(r"(Si+FE){3}", events.turns()), events.turns()
    assert sum("cartesia sent an error" in line for line in livekit_log(caplog)) == 3, livekit_log(caplog)


async def test_pipecat_turns_service_gets_a_transcript_per_turn() -> None:
    """Pipecat's `CartesiaTurnsSTTService` pointed at the daemon's turns URL over `ws://`, with its
    keyterms: a final per command, its updates as interims, no error."""
    engine = ContextRecordingEngineDouble()
    settings = CartesiaTurnsSTTService.Settings(keyterm=["Aoife Calloway"], turn_end_timeout_ms=5600)
    async with running_daemon(engine, api_key=KEY) as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/stt/turns/websocket"
        stt = CartesiaTurnsSTTService(api_key=KEY, url=url, settings=settings)
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    assert frames.interims, "turn updates reach Pipecat as interim transcripts"
    assert engine.names and all(names[:1] == ("Aoife Calloway",) for names in engine.names), engine.names


async def test_pipecat_turns_service_reports_the_sentence_of_a_refused_setting() -> None:
    """A turn setting out of Cartesia's range (Pipecat does not check it): the daemon's sentence
    naming it reaches the pipeline's error, as Cartesia's in-band refusal does; an HTTP refusal
    would show Pipecat's "HTTP 400" alone."""
    settings = CartesiaTurnsSTTService.Settings(turn_end_timeout_ms=100)
    async with running_daemon(api_key=KEY) as daemon:
        url = f"ws://127.0.0.1:{daemon.http_port}/stt/turns/websocket"
        stt = CartesiaTurnsSTTService(api_key=KEY, url=url, settings=settings)
        async with running_pipeline(stt) as (_worker, frames):
            await frames.wait_for(errors=1)
    assert "turn_end_timeout_ms must be a number from 640" in frames.errors[0], frames.errors
