"""A LiveKit speech stream's events as the tests of LiveKit's STT plugins read them (ElevenLabs',
Cartesia's, Soniox's, Speechmatics', Gladia's): collected as they come, waited for, shown as letters
when a test fails; a frame pushed into a stream that may have failed; and a fixture streamed
through a plugin at microphone pace."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import rtc
from livekit.agents import APIConnectOptions
from livekit.agents import stt as lk_stt

from satellite_asr.audio import SAMPLE_RATE
from tests.helpers import microphone_chunks

FRAME_S = 0.1
"""100 ms of audio a frame, pushed as a microphone delivers it."""


def pushed(stream: lk_stt.SpeechStream, data: bytes) -> bool:
    """`data` pushed as one frame; False if the stream has failed and takes no more audio. A failing
    stream closes its input a moment before a reader of its events sees the error, so a reader's
    state alone cannot tell (a fresh-clone CI pushed into that gap)."""
    try:
        stream.push_frame(rtc.AudioFrame(data, SAMPLE_RATE, 1, len(data) // 2))
    except RuntimeError as closed:
        if "is closed" not in str(closed):
            raise
        return False
    return True


class LiveKitEvents:
    """A LiveKit stream's speech events as they come (its usage reports left out)."""

    def __init__(self, stream: lk_stt.SpeechStream) -> None:
        self.events: list[lk_stt.SpeechEvent] = []
        self.changed = asyncio.Event()
        self.stream = stream
        self.reading = asyncio.create_task(self.read(stream))

    @property
    def offset(self) -> float:
        """What LiveKit adds to the times the daemon sent (0 on the stream's first connection)."""
        return self.stream.start_time_offset

    async def read(self, stream: lk_stt.SpeechStream) -> None:
        async for event in stream:
            if event.type != lk_stt.SpeechEventType.RECOGNITION_USAGE:
                self.events.append(event)
                self.changed.set()

    def of(self, kind: lk_stt.SpeechEventType) -> list[lk_stt.SpeechEvent]:
        return [event for event in self.events if event.type == kind]

    def finals(self) -> list[lk_stt.SpeechData]:
        return [event.alternatives[0] for event in self.of(lk_stt.SpeechEventType.FINAL_TRANSCRIPT)]

    def turns(self) -> str:
        """The events as letters: S START_OF_SPEECH, i an interim, F a final, E END_OF_SPEECH."""
        kinds = lk_stt.SpeechEventType
        letters = {
            kinds.START_OF_SPEECH: "S",
            kinds.INTERIM_TRANSCRIPT: "i",
            kinds.FINAL_TRANSCRIPT: "F",
            kinds.END_OF_SPEECH: "E",
        }
        return "".join(letters.get(event.type, "?") for event in self.events)

    async def wait_for(self, done: Callable[[], bool]) -> None:
        """Until `done()` (60 s at most: a hang fails); the stream failing (it raises) fails the test."""
        async with asyncio.timeout(60):
            while not done():
                if self.reading.done():
                    self.reading.result()
                    raise AssertionError(f"the stream ended early: {self.turns()}")
                self.changed.clear()
                waiting = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait((waiting, self.reading), return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()


async def stream_fixture(
    stt: Any,
    fixture: str,
    finals: int,
    after_chunk: Callable[[int], Awaitable[None]] | None = None,
    *,
    until_end: bool = False,
    lead_silence_s: float = 0,
) -> LiveKitEvents:
    """`fixture` through LiveKit's stream at microphone pace until `finals` finals with words, then
    `end_input`; no retries (an error from the stream fails the test). `after_chunk` is given each
    chunk's index once it is pushed. `until_end`: the stream is read to its end (30 s at most) before
    it is closed, for a plugin whose server ends the stream after `end_input` (Fireworks AI's):
    closed before, such a plugin's connection loop is cancelled and may leave a future whose
    exception asyncio logs when it is collected (tests/test_fireworks_clients.py). `lead_silence_s`:
    that much silence first, at the same pace (past the daemon's idle timeout, say)."""
    stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
    events = LiveKitEvents(stream)
    try:
        silence = [bytes(int(FRAME_S * SAMPLE_RATE) * 2)] * round(lead_silence_s / FRAME_S)
        for index, chunk in enumerate([*silence, *microphone_chunks(fixture, FRAME_S)]):
            if not pushed(stream, chunk):
                break
            if after_chunk is not None:
                await after_chunk(index)
            await asyncio.sleep(FRAME_S)
        await events.wait_for(lambda: len([final for final in events.finals() if final.text]) >= finals)
        stream.end_input()
        if until_end:
            async with asyncio.timeout(30):
                await events.reading
    finally:
        await stream.aclose()
        await stt.aclose()
    return events
