"""Cartesia's turn-detecting speech-to-text API at `/stt/turns/websocket` (docs/cartesia.md; the
SDK's `auto_finalize`, LiveKit's stream for `ink-2`): wire messages <-> `Session` calls.

The query is checked as on `/stt/websocket` (`cartesia.checked_query`); a bad one is refused after
the upgrade, in place of `connected`, as Cartesia does. `connected` comes first; each turn is a
`turn.start` once its first words are transcribed, a `turn.update` with the turn's text so far for
each newer partial, and `turn.end` with its final.
The daemon's turn detection ends a turn (Cartesia's `turn_*` thresholds are checked and not
applied), so there is no `turn.eager_end` nor `turn.resume`. The commands are JSON: `close` ends
the stream once its finals are sent, `config` changes thresholds, which are checked and not applied.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSMessage, web
from multidict import MultiMapping

from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, PartialTranscript, SessionError, SessionEvent, SpeechStarted
from satellite_asr.protocols import ProtocolError, ReadAhead
from satellite_asr.protocols.cartesia import CartesiaErrors, StreamingParams, checked_query, refused_in_band
from satellite_asr.protocols.streaming_apis import Api, Control, StreamParams, is_control

PATH = "/stt/turns/websocket"
PROTOCOL = "cartesia-turns"
THRESHOLDS = {
    "start_threshold": (0.5, 0.9),
    "eager_end_threshold": (0.3, 0.8),
    "end_threshold": (0.05, 0.5),
    "end_timeout_ms": (640.0, 11200.0),
}
"""Cartesia's turn detection settings in their ranges, as a `config` command's `turn` names them;
the query's are these with `turn_` before. `eager_end_threshold` up to 0.8 as Pipecat documents it
(the SDK says 0.6): a value one client sends is not refused."""


def parse_params(query: MultiMapping[str], core: Core) -> StreamParams:
    return checked_query(query, core, {f"turn_{name}": bounds for name, bounds in THRESHOLDS.items()})


def is_close(message: WSMessage) -> bool:
    """Whether a message is `close`: what the client sent before its Close is still wanted then."""
    return is_control(message, "close")


class TurnsConnection(CartesiaErrors):
    """A client of the turns API: `connected`, each turn's events, and `close` and `config`."""

    protocol = PROTOCOL

    def __init__(
        self, ws: web.WebSocketResponse, core: Core, request: web.Request, reading: ReadAhead, params: StreamParams
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        assert isinstance(params, StreamingParams)
        self.pending: set[int] = set()
        """Utterances heard whose final has not come yet."""
        self.in_turn = False
        """A `turn.start` was sent and its `turn.end` not yet."""

    async def opened(self) -> None:
        await self.send({"type": "connected", "request_id": self.request_id})

    async def closing(self) -> None:
        """Nothing: the stream ends with the last turn's `turn.end`."""

    async def turn(self, kind: str, text: str | None = None) -> None:
        message: dict[str, Any] = {"type": kind, "request_id": self.request_id}
        await self.send(message if text is None else {**message, "transcript": text.strip()})

    async def send_event(self, event: SessionEvent) -> None:
        if isinstance(event, SpeechStarted):
            self.pending.add(event.utterance_id)
        elif isinstance(event, PartialTranscript):
            # the utterance before has ended, its final not come yet: this is not its turn, nor yet a new one
            if not event.text.strip() or any(earlier < event.utterance_id for earlier in self.pending):
                return
            if not self.in_turn:
                self.in_turn = True
                await self.turn("turn.start")
            await self.turn("turn.update", event.text)
        elif isinstance(event, FinalTranscript):
            await self.end_turn(event)
        elif isinstance(event, SessionError):
            await self.error(event.code, event.message, counted=True)

    async def end_turn(self, event: FinalTranscript) -> None:
        """`turn.end` with the final's text (after a `turn.start` if no partial began the turn);
        nothing for an utterance in which no words were heard and no turn began."""
        self.pending.discard(event.utterance_id)
        if not event.text.strip() and not self.in_turn:
            return
        if not self.in_turn:
            await self.turn("turn.start")
        self.in_turn = False
        await self.turn("turn.end", event.text)

    def controls(self) -> dict[str, Control]:
        return {"close": self.end_stream, "config": self.configure}

    async def configure(self, message: dict[str, Any]) -> None:
        """Thresholds checked in their ranges, and not applied: the daemon's turn detection decides."""
        unknown = sorted(set(message) - {"type", "turn"})
        turn = message.get("turn", {})
        if unknown:
            raise ProtocolError(self.invalid_message, f"config has no field {', '.join(unknown)}")
        if not isinstance(turn, dict):
            raise ProtocolError(self.invalid_message, "config's turn must be an object")
        if unknown_turn := sorted(set(turn) - set(THRESHOLDS)):
            raise ProtocolError(self.invalid_message, f"config's turn has no field {', '.join(unknown_turn)}")
        for name, value in turn.items():
            low, high = THRESHOLDS[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                problem = f"config's turn.{name} must be a number from {low:g} to {high:g}, got {value!r}"
                raise ProtocolError(self.invalid_message, problem)


TURNS = Api(
    PATH,
    "Cartesia's turn-detecting speech-to-text API",
    parse_params,
    TurnsConnection,
    is_close,
    refused_in_band(is_close),
)
