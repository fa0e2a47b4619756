"""Which engine the settings ask for, built but not yet loaded."""

from __future__ import annotations

import logging

from satellite_asr.config import Settings
from satellite_asr.engines.base import Engine
from satellite_asr.engines.qwen3_prompt import Qwen3Decoding
from satellite_asr.engines.qwen3_remote import Qwen3RemoteEngine
from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine, cuda_available, vllm_importable
from satellite_asr.engines.whisper import WhisperEngine

log = logging.getLogger(__name__)


def auto_engine() -> tuple[str, str]:
    """The engine `auto` means on this machine, and why."""
    gpu = cuda_available()
    vllm = vllm_importable()
    if gpu and vllm:
        return "qwen3-vllm", "a CUDA GPU is present and vLLM is installed"
    if gpu:
        return "whisper", "a CUDA GPU is present but vLLM is not installed (pip install 'satellite-asr[vllm]')"
    return "whisper", "no CUDA GPU found" + ("" if vllm else " and vLLM is not installed")


def create_engine(settings: Settings) -> Engine:
    name = settings.engine
    if name == "auto":
        name, reason = auto_engine()
        log.info("engine auto: using %s: %s", name, reason)
    if name == "whisper":
        return WhisperEngine(
            settings.model,
            device=settings.whisper_device,
            compute_type=settings.whisper_compute_type,
            threads=settings.whisper_threads,
            concurrency=settings.decode_concurrency,
            beam_size=settings.whisper_beam_size,
            short_context=settings.whisper_short_context,
        )
    decoding = Qwen3Decoding(settings.qwen_max_new_tokens, settings.qwen_rollback_tokens, settings.qwen_fresh_partials)
    if name == "qwen3-vllm":
        return Qwen3VllmEngine(
            settings.model,
            dtype=settings.vllm_dtype,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            max_model_len=settings.vllm_max_model_len,
            max_num_seqs=settings.vllm_max_num_seqs,
            enforce_eager=settings.vllm_enforce_eager,
            kv_cache_bytes=settings.vllm_kv_cache_bytes,
            decoding=decoding,
        )
    if name == "qwen3-remote":
        return Qwen3RemoteEngine(
            settings.remote_urls,
            model=settings.model,
            api_key=settings.remote_api_key,
            timeout_s=settings.remote_timeout_s,
            health_interval_s=settings.remote_health_interval_s,
            max_concurrency=settings.remote_max_concurrency,
            decoding=decoding,
        )
    raise ValueError(f"unknown engine {name!r}")
