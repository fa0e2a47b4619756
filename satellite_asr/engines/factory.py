"""Which engine the settings ask for, built but not yet loaded."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

from satellite_asr.config import ConfigError, Settings
from satellite_asr.engines.base import Engine
from satellite_asr.engines.qwen3_prompt import Qwen3Decoding
from satellite_asr.engines.qwen3_remote import Qwen3RemoteEngine
from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine, cuda_available, vllm_importable
from satellite_asr.engines.whisper import WhisperEngine

log = logging.getLogger(__name__)

QWEN_AUDIO_TOKENS_PER_SECOND = 13
"""Tokens Qwen3-ASR's audio encoder gives a second of audio (12.5: 390 for 30 s)."""
QWEN_PROMPT_FRAME_TOKENS = 32
"""The chat template's own tokens around the context, the audio and the language header (about 20)."""


def auto_engine(remote_urls: Sequence[str] = ()) -> tuple[str, str]:
    """The engine `auto` means on this machine, and why: vLLM servers named in `remote_urls` were
    set up to be used (the add-on's `engine` stays at auto when a person fills them in)."""
    if remote_urls:
        return "qwen3-remote", "remote_urls names vLLM servers"
    gpu = cuda_available()
    vllm = vllm_importable()
    if gpu and vllm:
        return "qwen3-vllm", "a CUDA GPU is present and vLLM is installed"
    if gpu:
        return "whisper", "a CUDA GPU is present but vLLM is not installed (.venv/bin/pip install -e '.[vllm]')"
    return "whisper", "no CUDA GPU found" + ("" if vllm else " and vLLM is not installed")


def create_engine(settings: Settings) -> Engine:
    name = settings.engine
    if name == "auto":
        name, reason = auto_engine(settings.remote_urls)
        log.info("engine auto: using %s: %s", name, reason)
    if settings.remote_urls and name != "qwen3-remote":
        log.warning(
            "remote_urls is set, but only engine qwen3-remote uses it: the %s engine decodes here and the vLLM "
            "servers are not used (set engine: qwen3-remote or auto to use them)",
            name,
        )
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
        decoding = dataclasses.replace(decoding, max_context_tokens=qwen_context_tokens(settings, decoding))
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


def qwen_context_tokens(settings: Settings, decoding: Qwen3Decoding) -> int:
    """Most tokens of context an in-process decode may take: what `vllm_max_model_len` leaves after
    the longest utterance's audio and twice `qwen_max_new_tokens` (a partial's continuation and
    what it writes), at most `decoding.max_context_tokens`. A longer prompt fails its decode, so a
    model length that leaves no room is a configuration error, said at start-up."""
    audio = math.ceil(settings.max_utterance_s * QWEN_AUDIO_TOKENS_PER_SECOND)
    room = settings.vllm_max_model_len - audio - 2 * settings.qwen_max_new_tokens - QWEN_PROMPT_FRAME_TOKENS
    if room <= 0:
        raise ConfigError(
            f"vllm_max_model_len ({settings.vllm_max_model_len}) is too short: the longest utterance "
            f"(max_utterance_s {settings.max_utterance_s:g}) takes {audio} tokens of audio and twice "
            f"qwen_max_new_tokens {2 * settings.qwen_max_new_tokens}, with {QWEN_PROMPT_FRAME_TOKENS} for "
            "the prompt's frame: raise it or lower those"
        )
    return min(decoding.max_context_tokens, room)
