"""VllmServerDouble: a stand-in vLLM OpenAI server on 127.0.0.1 (a test double).

It answers what the qwen3-remote engine asks, in vLLM's shapes: `/v1/models`, `/tokenize` and
`/detokenize` (the tokens are the text's UTF-8 bytes, so a cut can fall inside a character as with
a byte-level tokenizer) and `/v1/chat/completions` (a fixed transcript, with each token's
log-probability when asked; 404 for another model, as vLLM answers). Tests make it misbehave: any
path's answer replaced by a status and a body, and decodes held until the test lets them go. The
real servers are tested in tests/vllm/ (CI only).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.helpers import free_port

MODEL = "Qwen/Qwen3-ASR-1.7B"
TRANSCRIPT = "turn on the lights"
"""What every decode answers (after a forced language header, so without one of its own)."""
COMPLETION_TOKENS = 7
STOP_TOKEN = "<|im_end|>"
"""The token that ends Qwen3-ASR's answer."""


class VllmServerDouble:
    def __init__(self, model: str = MODEL, transcript: str = TRANSCRIPT, logprob: float = -0.01) -> None:
        self.model = model
        self.transcript = transcript
        """What every decode answers."""
        self.logprob = logprob
        """Every token's log-probability, when a decode asks for them (-0.01: sure of every word)."""
        self.chat_bodies: list[dict[str, Any]] = []
        """What each chat completion asked, in order."""
        self.port = free_port()
        self.replies: dict[str, tuple[int, str]] = {}
        """A misbehaving server: a path's answer (status, body text) in place of the real one."""
        self.requests: Counter[str] = Counter()
        """Requests received, by path."""
        self.decoding = 0
        """Chat completions in progress now."""
        self.decodes_gate = asyncio.Event()
        """Chat completions are answered only while this is set (a busy server, for tests to hold them)."""
        self.decodes_gate.set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.decodes_gate.set()  # held decodes end, or the server's shutdown would wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests[request.path] += 1
        return await handler(request)

    def _reply(self, request: web.Request) -> web.Response | None:
        if request.path not in self.replies:
            return None
        status, body = self.replies[request.path]
        return web.Response(status=status, text=body, content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        return self._reply(request) or web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vllm"}]}
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        tokens = list(body["prompt"].encode())
        return self._reply(request) or web.json_response({"count": len(tokens), "tokens": tokens})

    async def _detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = bytes(body["tokens"]).decode(errors="replace")
        return self._reply(request) or web.json_response({"prompt": text})

    async def _chat(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        self.chat_bodies.append(body)
        self.decoding += 1
        try:
            await self.decodes_gate.wait()
        finally:
            self.decoding -= 1
        if body.get("model", self.model) != self.model:
            error = {"message": f"The model `{body['model']}` does not exist.", "type": "NotFoundError", "code": 404}
            return web.json_response({"object": "error", **error}, status=404)
        logprob = self.logprob if body.get("logprobs") else None
        return self._reply(request) or web.json_response(completion(self.transcript, logprob))


def completion(text: str, logprob: float | None = None) -> dict[str, Any]:
    """A chat completion's answer, as vLLM writes it; with `logprob`, each token's, a token per
    character (a vocabulary that holds each whole), with the bytes of its text as vLLM gives them,
    and last the stop token that ended the decode (in the list, not in the text)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprob is not None:
        choice["logprobs"] = {
            "content": [
                {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
                for token in [*text, STOP_TOKEN]
            ]
        }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [choice],
        "usage": {"prompt_tokens": 40, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 47},
    }
