"""Build a tiny, randomly initialised Qwen3-ASR checkpoint that vLLM's native model class loads.

Why: the real checkpoints are gigabytes and come from a hub that CI cannot reach. This one is a
few MB, built offline in about a second, deterministic (fixed seeds, corpus generated here), and
has the official layout: `config.json` with `thinker_config.{audio_config,text_config}`, a
byte-level BPE tokenizer with the Qwen special tokens and `<asr_text>`, a chat template that
renders like the official one, a Whisper feature extractor and safetensors under the official
`thinker.*` weight names. Random weights decode junk: tests assert structure and token counts.

Run as a script to build one by hand: `python tests/vllm/tiny_qwen3_asr.py OUT_DIR`.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from satellite_asr.engines.qwen3_prompt import LANGUAGES

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>")
ASR_TEXT_TOKEN = "<asr_text>"
"""Added but not special: the model writes it and decoding must keep it."""

CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- if m.content is string -%}{%- set ns.system = ns.system + m.content -%}"
    "{%- else -%}{%- for c in m.content if c.type == 'text' -%}{%- set ns.system = ns.system + c.text -%}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n<|im_start|>user\\n' -}}"
    "{%- for m in messages if m.role == 'user' and m.content is not string -%}"
    "{%- for c in m.content if c.type in ('audio', 'audio_url', 'input_audio') -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- endfor -%}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for m in messages if m.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if m.content is string -%}{{- m.content -}}"
    "{%- else -%}{%- for c in m.content if c.type == 'text' -%}{{- c.text -}}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Same rendering as the official template: system turn always (context or empty), one user turn
holding the audio placeholders, assistant turns, then the generation prompt."""

_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_COMMANDS = Path(__file__).resolve().parent.parent / "fixtures" / "fixtures.json"
_WORDS = sorted(
    {
        word
        for commands in json.loads(_COMMANDS.read_text()).values()
        for command in commands
        for word in command.split()
    }
    | set(LANGUAGES.values())
)
"""Training words for the tokenizer: the test commands and the language names."""
MEL_BINS, AUDIO_LAYERS, AUDIO_DIM, AUDIO_FFN, CONV_CHANNELS = 128, 2, 64, 128, 16
TEXT_LAYERS, TEXT_DIM, TEXT_FFN, HEADS, KV_HEADS, HEAD_DIM = 2, 64, 128, 2, 1, 32
"""HEAD_DIM: vLLM's CPU attention supports 32, 64, 80, ..."""

_AUDIO = {
    "model_type": "qwen3_asr_audio_encoder",
    "num_mel_bins": MEL_BINS,
    "encoder_layers": AUDIO_LAYERS,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": AUDIO_FFN,
    "d_model": AUDIO_DIM,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_function": "gelu",
    "activation_dropout": 0.0,
    "scale_embedding": False,
    "initializer_range": 0.02,
    "max_source_positions": 1500,
    "n_window": 50,
    "n_window_infer": 800,
    "conv_chunksize": 500,
    "downsample_hidden_size": CONV_CHANNELS,
    "output_dim": TEXT_DIM,
}
_TEXT = {
    "model_type": "qwen3_asr_text",
    "hidden_size": TEXT_DIM,
    "intermediate_size": TEXT_FFN,
    "num_hidden_layers": TEXT_LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
    "rope_scaling": {
        "rope_type": "default",
        "mrope_section": [6, 5, 5],
        "interleaved": True,
        "mrope_interleaved": True,
    },
    "attention_bias": False,
    "attention_dropout": 0.0,
}
"""`mrope_section` must sum to HEAD_DIM / 2."""


def _corpus(lines: int = 4000) -> Iterator[str]:
    rng = random.Random(0)
    for _ in range(lines):
        words = " ".join(rng.choices(_WORDS, k=rng.randint(3, 14)))
        yield f"language {rng.choice(_WORDS)}{ASR_TEXT_TOKEN}{words}{rng.choice('.?!,')} {rng.randint(0, 999)}"


def _write_tokenizer(out: Path) -> dict[str, int]:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, min_frequency=2, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(ASR_TEXT_TOKEN, special=False, normalized=False)])
    tokenizer.save(str(out / "tokenizer.json"))

    vocab = tokenizer.get_vocab()
    added = {
        str(vocab[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in (*SPECIAL_TOKENS, ASR_TEXT_TOKEN)
    }
    _dump(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "processor_class": "Qwen3ASRProcessor",
            "added_tokens_decoder": added,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "model_max_length": 4096,
            "split_special_tokens": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _dump(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return vocab


def _weights(vocab_size: int, rng: np.random.Generator) -> dict[str, npt.NDArray[np.float32]]:
    def normal(*shape: int, std: float = 0.02) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ones(n: int) -> npt.NDArray[np.float32]:
        return np.ones(n, np.float32)

    def zeros(n: int) -> npt.NDArray[np.float32]:
        return np.zeros(n, np.float32)

    w: dict[str, npt.NDArray[np.float32]] = {}
    a = "thinker.audio_tower."
    c, d, f = CONV_CHANNELS, AUDIO_DIM, AUDIO_FFN
    for i, inputs in ((1, 1), (2, c), (3, c)):
        w[f"{a}conv2d{i}.weight"] = normal(c, inputs, 3, 3, std=0.1)
        w[f"{a}conv2d{i}.bias"] = zeros(c)
    mel_after_convs = MEL_BINS // 2 // 2 // 2
    w[f"{a}conv_out.weight"] = normal(d, c * mel_after_convs)
    for layer in range(AUDIO_LAYERS):
        p = f"{a}layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[f"{p}self_attn.{proj}.weight"] = normal(d, d)
            w[f"{p}self_attn.{proj}.bias"] = zeros(d)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            w[f"{p}{norm}.weight"] = ones(d)
            w[f"{p}{norm}.bias"] = zeros(d)
        w[f"{p}fc1.weight"], w[f"{p}fc1.bias"] = normal(f, d), zeros(f)
        w[f"{p}fc2.weight"], w[f"{p}fc2.bias"] = normal(d, f), zeros(d)
    w[f"{a}ln_post.weight"], w[f"{a}ln_post.bias"] = ones(d), zeros(d)
    w[f"{a}proj1.weight"], w[f"{a}proj1.bias"] = normal(d, d), zeros(d)
    w[f"{a}proj2.weight"], w[f"{a}proj2.bias"] = normal(TEXT_DIM, d), zeros(TEXT_DIM)

    t = "thinker.model."
    h, inter, hd, heads, kv_heads = TEXT_DIM, TEXT_FFN, HEAD_DIM, HEADS, KV_HEADS
    w[f"{t}embed_tokens.weight"] = normal(vocab_size, h)
    for layer in range(TEXT_LAYERS):
        p = f"{t}layers.{layer}."
        w[f"{p}self_attn.q_proj.weight"] = normal(heads * hd, h)
        w[f"{p}self_attn.k_proj.weight"] = normal(kv_heads * hd, h)
        w[f"{p}self_attn.v_proj.weight"] = normal(kv_heads * hd, h)
        w[f"{p}self_attn.o_proj.weight"] = normal(h, heads * hd)
        w[f"{p}self_attn.q_norm.weight"], w[f"{p}self_attn.k_norm.weight"] = ones(hd), ones(hd)
        w[f"{p}mlp.gate_proj.weight"] = normal(inter, h)
        w[f"{p}mlp.up_proj.weight"] = normal(inter, h)
        w[f"{p}mlp.down_proj.weight"] = normal(h, inter)
        w[f"{p}input_layernorm.weight"], w[f"{p}post_attention_layernorm.weight"] = ones(h), ones(h)
    w[f"{t}norm.weight"] = ones(h)
    w["thinker.lm_head.weight"] = normal(vocab_size, h)
    return w


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def build_tiny_qwen3_asr(out: Path, languages: tuple[str, ...] = ("English", "Chinese")) -> Path:
    """Write the checkpoint into `out` (created if needed) and return it."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    vocab = _write_tokenizer(out)
    vocab_size = -(-len(vocab) // 64) * 64  # padded embedding rows, as in the real checkpoints
    text_config = {
        **_TEXT,
        "vocab_size": vocab_size,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|im_end|>"],
    }
    _dump(
        out / "config.json",
        {
            "architectures": ["Qwen3ASRForConditionalGeneration"],
            "model_type": "qwen3_asr",
            "support_languages": list(languages),
            "thinker_config": {
                "model_type": "qwen3_asr_thinker",
                "audio_config": _AUDIO,
                "text_config": text_config,
                "audio_token_id": vocab["<|audio_pad|>"],
                "audio_start_token_id": vocab["<|audio_start|>"],
                "audio_end_token_id": vocab["<|audio_end|>"],
                "user_token_id": vocab.get("user", 0),
                "initializer_range": 0.02,
                "dtype": "float32",
            },
            "dtype": "float32",
        },
    )
    _dump(
        out / "generation_config.json",
        {
            "bos_token_id": vocab["<|endoftext|>"],
            "eos_token_id": [vocab["<|im_end|>"], vocab["<|endoftext|>"]],
            "pad_token_id": vocab["<|endoftext|>"],
            "do_sample": False,
        },
    )
    _dump(
        out / "preprocessor_config.json",
        {
            "feature_extractor_type": "WhisperFeatureExtractor",
            "processor_class": "Qwen3ASRProcessor",
            "feature_size": 128,
            "sampling_rate": 16000,
            "hop_length": 160,
            "n_fft": 400,
            "chunk_length": 30,
            "n_samples": 480000,
            "nb_max_frames": 3000,
            "padding_side": "right",
            "padding_value": 0.0,
            "dither": 0.0,
            "return_attention_mask": True,
        },
    )
    save_file(_weights(vocab_size, np.random.default_rng(0)), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


if __name__ == "__main__":
    print(build_tiny_qwen3_asr(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen3-asr")))
