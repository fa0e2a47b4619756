"""Qwen3-ASR on one in-process vLLM `AsyncLLM`: every session's decodes batched on one GPU.

Each partial re-decodes all audio of the utterance so far, continuing the previous partial's text
with its last tokens rolled back (`qwen3_prompt`); the final is a fresh decode of the whole
utterance. Requests from all sessions go to the one engine concurrently, so vLLM batches them
continuously; finals are scheduled before partials (vLLM priority scheduling), and cancelling a
decode (a superseded partial) aborts it inside vLLM so it costs no more GPU time. vLLM is imported
only in `start`, so this module imports on machines without it.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib.util
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.engines.base import Engine, EngineError, EngineInfo, EngineStream, StreamOptions, model_location
from satellite_asr.engines.qwen3_prompt import LANGUAGES, Generated, Qwen3Decoding, chat_prompt
from satellite_asr.engines.sureness import token_pieces

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-ASR-0.6B"
FINAL_PRIORITY = 0
PARTIAL_PRIORITY = 1
"""vLLM serves lower priority values first: finals never wait behind partials."""

_LOAD_HEARTBEAT_S = 15.0


def vllm_importable() -> bool:
    """Whether the `vllm` package is installed (found without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    """Whether the NVIDIA driver reports at least one GPU.

    Asks NVML (the driver's management library) through ctypes: no torch import, and unlike
    `cuInit` it creates no CUDA context, so vLLM can still fork its workers afterwards.
    """
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    if nvml.nvmlInit_v2() != 0:
        return False
    try:
        count = ctypes.c_uint(0)
        return nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 and count.value > 0
    finally:
        nvml.nvmlShutdown()


def _batch_size_logger(observe: Callable[[int], None]) -> Any:
    """A vLLM stat logger class that passes each engine step's running request count to `observe`.

    vLLM runs every running request of a step in one forward pass, so that count is the batch size.
    Built on demand because vLLM is imported only when the engine starts.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class BatchSizeLogger(StatLoggerBase):  # type: ignore[misc,unused-ignore]  # Any where vllm is not installed
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
            running = scheduler_stats.num_running_reqs if scheduler_stats is not None else 0
            if running:
                observe(running)

        def log_engine_initialized(self) -> None:
            pass

    return BatchSizeLogger


class Qwen3VllmEngine(Engine):
    """One vLLM `AsyncLLM` shared by all sessions."""

    def __init__(
        self,
        model: str = "",
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int = 4096,
        max_num_seqs: int = 64,
        enforce_eager: bool = False,
        kv_cache_bytes: int = 0,
        decoding: Qwen3Decoding | None = None,
    ) -> None:
        """`kv_cache_bytes` 0 lets vLLM size the KV cache from `gpu_memory_utilization`."""
        self._model = model or DEFAULT_MODEL
        self._engine_kwargs: dict[str, Any] = {
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": True,
            "scheduling_policy": "priority",
            "limit_mm_per_prompt": {"audio": 1},
            "disable_log_stats": True,
        }
        if kv_cache_bytes:
            self._engine_kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
        self._max_num_seqs = max_num_seqs
        self._decoding = decoding or Qwen3Decoding()
        self._observe_batch: Callable[[int], None] | None = None
        self._llm: AsyncLLM | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count()
        self.aborted = 0
        """Requests aborted inside vLLM because their decode was cancelled (superseded partials)."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("qwen3-vllm", self._model, list(LANGUAGES), self._max_num_seqs)

    @property
    def pending(self) -> int:
        """Requests vLLM has not finished yet (queued or running)."""
        return self._llm.get_num_unfinished_requests() if self._llm else 0

    def report_batch_sizes(self, observe: Callable[[int], None]) -> None:
        self._observe_batch = observe

    async def start(self) -> None:
        with self._lock:
            self._closed = False  # a restart (close, then start) loads it again
        log.info(
            "loading %s with vLLM (%s)", self._model, ", ".join(f"{k}={v}" for k, v in self._engine_kwargs.items())
        )
        started = time.monotonic()
        heartbeat = asyncio.create_task(self._log_while_loading(started))
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._create)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] != "vllm":
                raise EngineError(f"cannot start vLLM with model {self._model!r}: {exc}") from exc
            raise EngineError(
                "the qwen3-vllm engine needs vLLM, which is not installed: on a machine with an NVIDIA GPU, in the "
                "checkout, .venv/bin/pip install -e '.[vllm]' (README: On a GPU); or engine whisper or auto"
            ) from exc
        except Exception as exc:
            raise EngineError(f"cannot start vLLM with model {self._model!r}: {exc}") from exc
        finally:
            heartbeat.cancel()
        self._ready = True
        log.info(
            "vLLM engine ready in %.1f s: %s, up to %d decodes at once",
            time.monotonic() - started,
            self._model,
            self._max_num_seqs,
        )

    def _create(self) -> None:
        """Build the engine (in a worker thread, which a cancelled `start` cannot stop).

        This frame outlives the call (vLLM's lazy first import, made here, keeps a frame above it
        alive), so it must end holding no reference to the engine, or `close` could not free it:
        the engine is stored, not returned, and the local dropped. If `close` came while loading,
        the new engine is shut down at once instead of outliving the daemon.
        """
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        loggers = [_batch_size_logger(self._observe_batch)] if self._observe_batch else None
        args = AsyncEngineArgs(model=model_location(self._model), **self._engine_kwargs)
        llm = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
        with self._lock:
            keep = not self._closed
            if keep:
                self._llm = llm
        if not keep:
            llm.shutdown()
        del llm

    @staticmethod
    async def _log_while_loading(started: float) -> None:
        while True:
            await asyncio.sleep(_LOAD_HEARTBEAT_S)
            log.info("vLLM engine still loading (%.0f s)", time.monotonic() - started)

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return self._decoding.open_stream(self, options)

    async def encode(self, text: str) -> list[int]:
        return list(self._loaded().get_tokenizer().encode(text, add_special_tokens=False))

    async def decode_tokens(self, ids: Sequence[int]) -> str:
        return str(self._loaded().get_tokenizer().decode(list(ids)))

    async def continue_decode(
        self, context: str, continuation: str, audio: Audio, *, final: bool, sureness: bool
    ) -> Generated:
        """Decode `audio` after the chat prompt and `continuation`.

        Cancelling the caller aborts the request inside vLLM (its `generate` does so as the
        cancellation passes through): a superseded partial costs no more GPU time.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt = chat_prompt(context) + continuation
        llm = self._loaded()
        params = SamplingParams(
            temperature=0.0,
            max_tokens=self._decoding.max_new_tokens,
            ignore_eos=self._decoding.ignore_eos,
            output_kind=RequestOutputKind.FINAL_ONLY,
            logprobs=0 if sureness else None,  # 0: the written token's own, no alternatives
        )
        request_id = f"qwen3-{'final' if final else 'partial'}-{next(self._ids)}"
        output = None
        submitted = False
        try:
            (rendered,) = await llm.renderer.render_cmpl_async(
                [{"prompt": prompt, "multi_modal_data": {"audio": (audio, SAMPLE_RATE)}}]
            )
            submitted = True
            priority = FINAL_PRIORITY if final else PARTIAL_PRIORITY
            async for finished in llm.generate(rendered, params, request_id, priority=priority):
                output = finished
        except asyncio.CancelledError:
            if submitted:
                self.aborted += 1
            raise
        except EngineDeadError as exc:  # its own text points at a stack trace in the log, not for clients
            raise EngineError("the vLLM engine process has stopped; the daemon restarts it") from exc
        except Exception as exc:
            raise EngineError(f"vLLM decode failed: {exc}") from exc
        if output is None or not output.outputs:
            raise EngineError("vLLM returned no output")
        completion = output.outputs[0]
        if completion.finish_reason == "abort":
            raise EngineError("vLLM aborted the decode (engine shutting down)")
        ids = list(completion.token_ids)
        if not sureness or completion.logprobs is None:
            return Generated(completion.text, len(ids))
        logprobs = [  # a position vLLM left without the written token's: not a number, so the text is judged alone
            position[token].logprob if position and token in position else math.nan
            for token, position in zip(ids, completion.logprobs, strict=True)
        ]
        tokenizer = llm.get_tokenizer()  # the engine this decode ran on, even if a restart replaced it since
        pieces = token_pieces(ids, lambda part: str(tokenizer.decode(part, skip_special_tokens=True)))
        return Generated.with_sureness(completion.text, len(ids), pieces, logprobs)

    def _loaded(self) -> AsyncLLM:
        if self._llm is None:
            raise EngineError("the vLLM engine is not started")
        return self._llm

    async def close(self) -> None:
        """Stop vLLM's engine process, in a worker thread: that takes seconds (more when the process
        died: vLLM waits, then kills what is left), and a restart (`core.py`) happens while every
        other session is being served on this loop."""
        self._ready = False
        with self._lock:
            self._closed = True
            llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(None, llm.shutdown)
            del llm
            gc.collect()  # AsyncLLM sits in reference cycles; collected now, its __del__ runs before exit
