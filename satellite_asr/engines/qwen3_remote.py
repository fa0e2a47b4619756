"""Qwen3-ASR on remote vLLM servers (`vllm serve Qwen/Qwen3-ASR-1.7B`): scale-out past one GPU.

Sends the same streaming decodes as the in-process engine, as OpenAI chat completions: the audio
as a base64 WAV `input_audio` part, context as the system message, and the forced-language header
plus rolled-back previous text as a final assistant message that the server continues
(`continue_final_message`). Rollback needs the model's tokenizer, so it is asked of the servers too
(`/tokenize`, `/detokenize`). Each request goes to the healthy endpoint with the fewest requests
in flight; an endpoint that fails (connection error, timeout, HTTP 5xx, or 429: too busy) is marked
unhealthy and the request is retried on the next one. A background probe (`/v1/models`, every
`health_interval_s`) marks servers unhealthy while they do not answer (or, with `model` set, serve
another model) and healthy again once they do. Cancelling a decode (a superseded partial) cancels
its HTTP request, and vLLM aborts a request whose client went away.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import io
import json
import logging
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from satellite_asr.audio import SAMPLE_RATE, Audio, to_pcm16
from satellite_asr.engines.base import Engine, EngineError, EngineInfo, EngineStream, StreamOptions
from satellite_asr.engines.qwen3_prompt import LANGUAGES, Generated, Qwen3Decoding

log = logging.getLogger(__name__)


MAX_ANSWER_BYTES = 1 << 20
"""Most of an answer that is read: a decode's is a few kB, so more is no vLLM answer (and would
cost the daemon its memory)."""
EXCERPT_CHARS = 300
"""Most of an answer quoted in an error (errors go to clients and logs)."""
UNKNOWN_LOGPROB = -9999.0
"""What a vLLM server writes for a token whose log-probability it does not have (its default),
and its floor for one it does: either way no measure of sureness."""


class _EndpointFailed(Exception):
    """The endpoint, not the request, is at fault: try another one."""


@dataclass
class Endpoint:
    """One vLLM OpenAI-compatible server."""

    url: str
    healthy: bool = False
    in_flight: int = 0
    served_model: str = ""
    reason: str = ""
    """Why it was last marked unhealthy."""


def _reason(exc: Exception, timeout_s: float) -> str:
    """What went wrong, as a sentence: a timeout's own text is empty."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {timeout_s:g} s"
    return str(exc) or type(exc).__name__


async def _read_body(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The answer's first `MAX_ANSWER_BYTES`, and whether that is all of it (the rest is not read)."""
    try:
        return (await response.content.readexactly(MAX_ANSWER_BYTES + 1))[:MAX_ANSWER_BYTES], False
    except asyncio.IncompleteReadError as whole:
        return whole.partial, True


def _parsed(answer: bytes) -> object:
    """An answer's JSON; ValueError also for one nested deeper than Python's parser goes (no vLLM
    answer is), which would otherwise escape as RecursionError: no failover, a failed start."""
    try:
        return json.loads(answer)
    except RecursionError:
        raise ValueError("its answer nests too deeply to be parsed as JSON") from None


def _excerpt(answer: object) -> str:
    """An answer (its bytes, or what they parsed to) as an error quotes it: its start."""
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else repr(answer)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _model_ids(answer: object) -> list[str]:
    """The model ids of a `/v1/models` answer; ValueError if it is not an OpenAI model list."""
    models = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        raise ValueError(f"its /v1/models answer is not a list of models with ids: {_excerpt(answer)}")
    return [m["id"] for m in models]


def _token_logprobs(payload: dict[str, Any]) -> tuple[list[str], list[float]]:
    """Each written token's text and log-probability from a chat completion's `logprobs`; none
    when the answer has no such list, or an entry has no bytes. The texts come from the tokens'
    bytes decoded in order, so a character split between tokens would belong to the token that
    completes it (vLLM 0.32 itself gives "" for a character's first part and the whole character
    on the last); pieces that do not spell the text (U+FFFD for part of a character) leave it
    judged alone (`Generated.with_sureness`), as does a token at `UNKNOWN_LOGPROB`."""
    try:
        content = payload["choices"][0]["logprobs"]["content"]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces = [decoder.decode(_token_bytes(entry["bytes"])) for entry in content]
        logprobs = [float(entry["logprob"]) for entry in content]
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):  # bytes(None), a number out of a byte
        return [], []
    if any(logprob <= UNKNOWN_LOGPROB for logprob in logprobs):
        return [], []
    return pieces, logprobs


def _token_bytes(listed: object) -> bytes:
    """A token's bytes as the answer lists them; only a list is taken (`bytes(10**12)` would
    allocate a terabyte of zeros)."""
    if not isinstance(listed, list):
        raise TypeError(f"a token's bytes are not a list: {type(listed).__name__}")
    return bytes(listed)


def wav_base64(audio: Audio) -> str:
    """16-bit mono WAV at 16 kHz, base64: what OpenAI `input_audio` carries."""
    pcm = to_pcm16(audio)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Qwen3RemoteEngine(Engine):
    """A pool of vLLM servers serving Qwen3-ASR."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        model: str = "",
        api_key: str = "",
        timeout_s: float = 30.0,
        health_interval_s: float = 5.0,
        max_concurrency: int = 64,
        decoding: Qwen3Decoding | None = None,
    ) -> None:
        """`model` empty: whatever model each server serves."""
        if not urls:
            raise EngineError("the qwen3-remote engine needs at least one server URL (remote_urls)")
        self.endpoints = [Endpoint(url.rstrip("/").removesuffix("/v1")) for url in urls]
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._probe_timeout_s = min(5.0, timeout_s)
        self._health_interval_s = health_interval_s
        self._max_concurrency = max_concurrency
        self._decoding = decoding or Qwen3Decoding()
        self._session: aiohttp.ClientSession | None = None
        self._prober: asyncio.Task[None] | None = None

    restartable = False
    """The models live in the vLLM servers; this engine already probes them (`_probe_forever`)."""

    @property
    def info(self) -> EngineInfo:
        model = self._model or next((e.served_model for e in self.endpoints if e.served_model), "")
        return EngineInfo("qwen3-remote", model, list(LANGUAGES), self._max_concurrency)

    @property
    def ready(self) -> bool:
        """Started and at least one server answering."""
        return self._ready and any(endpoint.healthy for endpoint in self.endpoints)

    async def start(self) -> None:
        # No cap on connections (aiohttp's default is 100): the scheduler already bounds the decodes
        # (remote_max_concurrency, up to 4096), a wait for a pooled connection would count against
        # the request's timeout, and the probes must not wait behind decodes.
        self._session = aiohttp.ClientSession(headers=self._headers, connector=aiohttp.TCPConnector(limit=0))
        await asyncio.gather(*(self._probe(endpoint) for endpoint in self.endpoints))
        self._prober = asyncio.create_task(self._probe_forever())
        self._ready = True
        healthy = [e.url for e in self.endpoints if e.healthy]
        log.info(
            "qwen3-remote: %d of %d servers answering: %s",
            len(healthy),
            len(self.endpoints),
            ", ".join(healthy) or "none yet",
        )

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            async with self._loaded().get(
                f"{endpoint.url}/v1/models", timeout=aiohttp.ClientTimeout(total=self._probe_timeout_s)
            ) as response:
                response.raise_for_status()
                answer, whole = await _read_body(response)
            if not whole:
                raise ValueError(f"its /v1/models answer is over {MAX_ANSWER_BYTES} bytes")
            models = _model_ids(_parsed(answer))
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self._mark_unhealthy(endpoint, _reason(exc, self._probe_timeout_s))
            return
        if self._model and self._model not in models:  # it would answer every request 404
            self._mark_unhealthy(
                endpoint, f"it serves {', '.join(models) or 'no model'}, not the configured {self._model}"
            )
            return
        endpoint.served_model = models[0] if models else ""
        if not endpoint.healthy:
            log.info("vLLM server %s is answering (model %s)", endpoint.url, endpoint.served_model)
        endpoint.healthy = True

    def _mark_unhealthy(self, endpoint: Endpoint, reason: str) -> None:
        """Skip `endpoint` until it answers again; logged when it was healthy or fails otherwise than
        before (so a server already down at start is logged once, not at every probe)."""
        if endpoint.healthy or reason != endpoint.reason:
            log.warning("vLLM server %s marked unhealthy: %s", endpoint.url, reason)
        endpoint.healthy = False
        endpoint.reason = reason

    async def _probe_forever(self) -> None:
        """Probe every server each interval; an unforeseen error is logged, and probing goes on."""
        while True:
            await asyncio.sleep(self._health_interval_s)
            try:
                await asyncio.gather(*(self._probe(endpoint) for endpoint in self.endpoints))
            except Exception:
                log.exception("probing the vLLM servers failed; probing again in %g s", self._health_interval_s)

    def _loaded(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineError("the qwen3-remote engine is not started")
        return self._session

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return self._decoding.open_stream(self, options)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the least busy endpoint; on an endpoint failure, the next one (each at most once).

        Unhealthy endpoints come last rather than never: when all are marked down, one may be
        back before the probe notices.
        """
        order = sorted(self.endpoints, key=lambda e: (not e.healthy, e.in_flight))
        failures = []
        for endpoint in order:
            try:
                result = await self._post(endpoint, path, body)
            except _EndpointFailed as exc:
                self._mark_unhealthy(endpoint, str(exc))
                failures.append(f"{endpoint.url}: {exc}")
                continue
            endpoint.healthy = True
            return result
        raise EngineError("no vLLM server answered: " + "; ".join(failures))

    async def _post(self, endpoint: Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
        endpoint.in_flight += 1
        try:
            async with self._loaded().post(
                f"{endpoint.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=self._timeout_s)
            ) as response:
                status = response.status
                answer, whole = await _read_body(response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _EndpointFailed(_reason(exc, self._timeout_s)) from exc
        finally:
            endpoint.in_flight -= 1
        if status >= 500 or status == 429:  # broken, or too busy (429): another server may answer
            raise _EndpointFailed(f"HTTP {status}: {_excerpt(answer)}")
        if status != 200:
            raise EngineError(f"vLLM server {endpoint.url} refused the request: HTTP {status}: {_excerpt(answer)}")
        if not whole:
            raise _EndpointFailed(f"HTTP 200 with an answer over {MAX_ANSWER_BYTES} bytes")
        try:
            payload = _parsed(answer)
        except ValueError as exc:
            raise _EndpointFailed(f"HTTP 200 with an answer that is not JSON: {_excerpt(answer)}") from exc
        if not isinstance(payload, dict):
            raise EngineError(f"vLLM server {endpoint.url} answered HTTP 200 with no JSON object: {_excerpt(answer)}")
        return payload

    def _model_field(self) -> dict[str, str]:
        return {"model": self._model} if self._model else {}

    async def encode(self, text: str) -> list[int]:
        path = "/tokenize"
        payload = await self.call(path, {**self._model_field(), "prompt": text, "add_special_tokens": False})
        tokens = payload.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(token, int) for token in tokens):
            raise EngineError(f"unexpected answer from vLLM server to {path} (no token list): {_excerpt(payload)}")
        return tokens

    async def decode_tokens(self, ids: Sequence[int]) -> str:
        path = "/detokenize"
        payload = await self.call(path, {**self._model_field(), "tokens": list(ids)})
        text = payload.get("prompt")
        if not isinstance(text, str):
            raise EngineError(f"unexpected answer from vLLM server to {path} (no text): {_excerpt(payload)}")
        return text

    async def continue_decode(
        self, context: str, continuation: str, audio: Audio, *, final: bool, sureness: bool
    ) -> Generated:
        """What the assistant writes after `continuation`.

        `final` changes nothing here: a vLLM server refuses request priorities unless it was started
        with priority scheduling, so remote decodes are served in the order they arrive. A server
        that leaves out the log-probabilities asked for (`sureness`) is still answered: the names'
        correction then judges the text alone.
        """
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": context},
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": wav_base64(audio), "format": "wav"}}],
            },
        ]
        if continuation:
            messages.append({"role": "assistant", "content": continuation})
        body = {
            **self._model_field(),
            "messages": messages,
            "temperature": 0.0,
            "max_completion_tokens": self._decoding.max_new_tokens,
            "ignore_eos": self._decoding.ignore_eos,
            "add_generation_prompt": not continuation,
            "continue_final_message": bool(continuation),
        }
        if sureness:
            body["logprobs"] = True  # each written token's own (no alternatives), with its UTF-8 bytes
        path = "/v1/chat/completions"
        payload = await self.call(path, body)
        try:
            text = payload["choices"][0]["message"]["content"] or ""
            tokens = int(payload.get("usage", {}).get("completion_tokens", 0))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError):  # int(Infinity)
            text = None
        if not isinstance(text, str):
            raise EngineError(f"unexpected answer from vLLM server to {path}: {_excerpt(payload)}")
        if not sureness:
            return Generated(text, tokens)
        return Generated.with_sureness(text, tokens, *_token_logprobs(payload))

    async def close(self) -> None:
        self._ready = False
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._session is not None:
            await self._session.close()
            self._session = None
