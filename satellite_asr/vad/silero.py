"""Silero VAD shared by every stream: one ONNX session, windows of many streams in one call.

The model is recurrent (state `(2, batch, 128)`) and each 512-sample window is fed with the 64
samples before it as context. A `VadStream` keeps both for its stream, plus the samples of a chunk
that did not fill a window. Requests from all streams queue up; one worker thread takes everything
queued and runs it as a batch, so N sessions cost about one model call per window step, not N.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.vad.endpointer import WINDOW

CONTEXT = 64
"""Samples of the previous window prepended to each window (Silero v5+ at 16 kHz)."""

Floats = npt.NDArray[np.float32]


def bundled_model_path() -> Path:
    """The ONNX model shipped in the `silero-vad` package (no download needed), found without
    importing the package: its `__init__` imports torch, which cost the daemon seconds of CPU at
    start and at exit (a busy machine's shutdown waited 2-3 s for the interpreter to tear it down)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the silero-vad package is not installed", name="silero_vad")
    return Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"


class VadStream:
    """One stream's recurrent state, context and leftover samples."""

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self.state: Floats = np.zeros((2, 1, 128), dtype=np.float32)
        self.context: Floats = np.zeros(CONTEXT, dtype=np.float32)
        self._pending: Floats = np.zeros(0, dtype=np.float32)

    async def process(self, samples: Floats) -> list[float]:
        """Speech probability of every whole window completed by `samples` (16 kHz mono float32)."""
        buffered = np.concatenate([self._pending, samples]) if self._pending.size else samples
        count = buffered.size // WINDOW
        self._pending = buffered[count * WINDOW :].copy()
        if count == 0:
            return []
        windows = buffered[: count * WINDOW].reshape(count, WINDOW)
        return await self._vad.infer(self, windows)


@dataclass
class _Request:
    stream: VadStream
    windows: Floats
    future: asyncio.Future[list[float]]
    probabilities: list[float] = field(default_factory=list)


class SileroVad:
    """The shared model. Call `start()` inside the running loop before streams use it."""

    def __init__(self, on_busy: Callable[[float], None] | None = None) -> None:
        """`on_busy` is told the wall seconds of every batch (the daemon exports them as a metric)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(bundled_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="silero")
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._on_busy = on_busy
        self.batches = 0
        """Model calls made: fewer than the windows they scored when streams were batched."""

    def open_stream(self) -> VadStream:
        return VadStream(self)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._serve(), name="silero-vad")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    async def infer(self, stream: VadStream, windows: Floats) -> list[float]:
        if self._queue is None:
            raise RuntimeError("SileroVad.start() was not called")
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(stream, windows, future))
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [r for r in batch if not r.future.cancelled()]
            try:
                await loop.run_in_executor(self._executor, self._run_batch, live)
            except Exception as exc:  # a model failure fails these requests, not the worker
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for request in live:
                if not request.future.done():
                    request.future.set_result(request.probabilities)

    def _run_batch(self, requests: list[_Request]) -> None:
        """Step through the requests' windows; step t batches every stream that has a window t."""
        started = time.perf_counter()
        steps = max((len(r.windows) for r in requests), default=0)
        for step in range(steps):
            active = [r for r in requests if step < len(r.windows)]
            inputs = np.stack([np.concatenate([r.stream.context, r.windows[step]]) for r in active])
            state = np.concatenate([r.stream.state for r in active], axis=1)
            output, new_state = self._session.run(None, {"input": inputs, "state": state, "sr": self._sr})
            for index, request in enumerate(active):
                request.probabilities.append(float(output[index, 0]))
                request.stream.state = new_state[:, index : index + 1, :]
                request.stream.context = request.windows[step][-CONTEXT:]
            self.batches += 1
        if self._on_busy is not None:
            self._on_busy(time.perf_counter() - started)
