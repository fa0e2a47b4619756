"""Qwen3-ASR prompts, streaming rollback, output parsing and the utterance stream, shared by the
vLLM and remote engines.

No vLLM import, so both engines build the same prompt:

    <|im_start|>system\\n{context}<|im_end|>\\n
    <|im_start|>user\\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\\n
    <|im_start|>assistant\\n{continuation}

The system turn is always present (empty without context), as in the official chat template, and
depends only on the context (without control tokens, cut to `max_context_tokens`: `plain_context`,
`first_tokens`), so vLLM's prefix cache reuses it across utterances. The
continuation is what the assistant is made to have "already said": the forced-language header
`language English<asr_text>` and, while streaming, the previous decode with its last tokens rolled
back. The model answers `language English<asr_text>text` (or just the text after a forced header).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from satellite_asr.audio import Audio
from satellite_asr.biasing.context import NAME_SEPARATOR
from satellite_asr.engines.base import EngineStream, StreamOptions, TokenSpan, Transcript
from satellite_asr.engines.sureness import measured, spans_of, transcript_spans

log = logging.getLogger(__name__)

ASR_TEXT_TAG = "<asr_text>"
AUDIO_PLACEHOLDER = "<|audio_start|><|audio_pad|><|audio_end|>"
_LANGUAGE_HEADER = "language "

LANGUAGES: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
    "el": "Greek",
    "hu": "Hungarian",
    "mk": "Macedonian",
    "ro": "Romanian",
}
"""The 30 languages Qwen3-ASR recognises: the code reported to clients -> the name in its prompts."""

CHINESE_DIALECTS = (
    "Anhui",
    "Dongbei",
    "Fujian",
    "Gansu",
    "Guizhou",
    "Hebei",
    "Henan",
    "Hubei",
    "Hunan",
    "Jiangxi",
    "Ningxia",
    "Shandong",
    "Shaanxi",
    "Shanxi",
    "Sichuan",
    "Tianjin",
    "Yunnan",
    "Zhejiang",
    "Cantonese (Hong Kong accent)",
    "Cantonese (Guangdong accent)",
    "Wu",
    "Minnan",
)
"""The 22 Chinese dialects it also recognises. They have no language name of their own in the
model's prompt or output (it answers `Chinese` or `Cantonese`), so they add no language code: a
client asks for `zh` (or `yue`) or lets the model detect."""

Encode = Callable[[str], Awaitable[Sequence[int]]]
Decode = Callable[[Sequence[int]], Awaitable[str]]
"""The model's tokenizer, async: the remote engine asks a vLLM server (`/tokenize`, `/detokenize`)."""

_NAME_TO_CODE = {name.lower(): code for code, name in LANGUAGES.items()}


def language_name(language: str) -> str | None:
    """The Qwen name for a language code (`en`, `en-US`, `zh_TW`) or name (`English`); None if unsupported."""
    key = language.strip().lower().replace("_", "-")
    if key in LANGUAGES:
        return LANGUAGES[key]
    if key in _NAME_TO_CODE:
        return LANGUAGES[_NAME_TO_CODE[key]]
    primary = key.split("-", 1)[0]
    return LANGUAGES.get(primary)


def language_code(name: str) -> str | None:
    """The code for a language name the model wrote (`English` -> `en`); None if it is not one of the 30."""
    return _NAME_TO_CODE.get(name.strip().lower())


_CONTROL_TOKEN = re.compile(r"<\|[^|]+\|>|" + re.escape(ASR_TEXT_TAG))
"""The model's chat and audio markers (`<|im_end|>`, `<|audio_pad|>`, ...) and its transcript tag."""


def plain_context(text: str) -> str:
    """`text` without the model's control tokens, which the tokenizer would read as such in a prompt.

    Context comes from clients and Home Assistant names: as text it must not end the system turn,
    start an assistant answer or add an audio slot (vLLM would put the audio there). Removed until
    none is left, as removing one can join the halves of another (`<|im<|x|>_end|>`).
    """
    while (plain := _CONTROL_TOKEN.sub("", text)) != text:
        text = plain
    return text


def chat_prompt(context: str = "") -> str:
    """The chat template's rendering up to the assistant's turn (system turn = context)."""
    return (
        f"<|im_start|>system\n{context}<|im_end|>\n"
        f"<|im_start|>user\n{AUDIO_PLACEHOLDER}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def language_header(name: str) -> str:
    """The assistant prefix that forces a language: the model then writes only the text."""
    return f"{_LANGUAGE_HEADER}{name}{ASR_TEXT_TAG}"


def parse_output(raw: str, forced_language: str | None = None) -> tuple[str | None, str]:
    """Split the assistant's raw text into (language code, transcript).

    With a forced language the whole raw text is the transcript. Otherwise the model writes
    `language X<asr_text>text`; `language None` means it heard no speech, and a header cut off
    before `<asr_text>` (max tokens reached) has no transcript yet.
    """
    raw = raw.strip()
    if forced_language is not None:
        return language_code(forced_language), raw
    if ASR_TEXT_TAG not in raw:
        return None, "" if raw.startswith(_LANGUAGE_HEADER.strip()) else raw
    header, text = raw.split(ASR_TEXT_TAG, 1)
    name = header.strip().removeprefix(_LANGUAGE_HEADER.strip()).strip()
    if name.lower() == "none":
        return None, ""
    return language_code(name), text.strip()


_MOST_CUTS = 8
"""Cuts `roll_back` and `first_tokens` try: a character is at most 4 bytes, and a token may hold the end of one and
the start of the next, so a whole character ends a few tokens back; further back than this the
text itself ends in U+FFFD, and the decode starts afresh rather than ask a server for each token."""


async def roll_back(text: str, tokens: int, encode: Encode, decode: Decode) -> str:
    """`text` without its last `tokens` tokens, never ending in half a multi-byte character.

    The last few tokens of a streaming decode are the least reliable (the audio after them is not
    heard yet), so the next decode is made to continue from a point a little before them.
    """
    ids = list(await encode(text))
    return await _whole_characters(ids, len(ids) - tokens, decode)


async def first_tokens(text: str, limit: int, encode: Encode, decode: Decode) -> str:
    """`text` cut to at most `limit` tokens, after the last whole name that fits (half a name biases
    towards another one); `text` itself when it fits.

    A context's tokens count against the model's length, and a client can send a few thousand
    characters that take several tokens each: uncut, every decode of its session would fail.
    """
    if len(text.encode()) <= limit:  # no token is shorter than a byte: no need to ask the tokenizer
        return text
    ids = list(await encode(text))
    if len(ids) <= limit:
        return text
    kept = await _whole_characters(ids, limit, decode)
    return kept.rpartition(NAME_SEPARATOR)[0] or kept


async def _whole_characters(ids: list[int], end: int, decode: Decode) -> str:
    """The text of `ids[:end]`, or of a few tokens fewer, that ends on a whole character; "" if none does."""
    for cut in range(end, max(end - _MOST_CUTS, 0), -1):
        kept = await decode(ids[:cut])
        if not kept.endswith("\ufffd"):  # one inside is the model's own (vLLM's for invalid bytes)
            return kept
    return ""


@dataclass(frozen=True)
class Generated:
    """What one decode wrote after its continuation."""

    text: str
    tokens: int
    """Token count (for metrics, and tests that cannot check words)."""
    token_ends: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    """When the decode was asked how sure it was (`sureness`): where each token's text ends in
    `text` (characters) and that token's log-probability; empty otherwise, or when the pieces the
    model reported do not spell `text`."""

    @classmethod
    def with_sureness(cls, text: str, tokens: int, pieces: Sequence[str], logprobs: Sequence[float]) -> Generated:
        """`text` with the piece each token wrote and its log-probability, kept only where the pieces
        spell `text` and each has a finite log-probability (else the text alone: `measured`)."""
        return cls(text, tokens, *measured(text, pieces, logprobs))

    def spans(self, offset: int = 0) -> list[TokenSpan]:
        """Each token as a span of a text where this one starts at `offset` (`spans_of`)."""
        return spans_of(self.token_ends, self.logprobs, offset)


@dataclass
class Qwen3Utterance:
    """What one utterance's decodes share: the previous partial's raw output, for rollback."""

    forced_language: str | None = None
    """Qwen language name, or None to let the model detect it."""
    rollback_tokens: int = 5
    """K: tokens of the previous decode that the next one may change."""
    fresh_partials: int = 2
    """N: the first N partials start from scratch (too little audio for a useful prefix)."""
    partials: int = 0
    raw: str = ""
    """Assistant output of the last partial, from after the forced header."""
    raw_spans: tuple[TokenSpan, ...] = ()
    """How sure the model was of `raw`'s tokens, when asked: a partial's rolled-back prefix keeps them."""

    @classmethod
    def for_language(cls, language: str | None, rollback_tokens: int, fresh_partials: int) -> Qwen3Utterance:
        """An utterance forced to `language` (a code or name) if Qwen3-ASR knows it, else detecting."""
        forced = language_name(language) if language else None
        if language and forced is None:
            log.warning("language %r is not supported by Qwen3-ASR; detecting the language instead", language)
        return cls(forced, rollback_tokens, fresh_partials)

    async def partial_continuation(self, encode: Encode, decode: Decode) -> str:
        """Assistant prefix of the next partial: forced header + rolled-back previous output."""
        previous = ""
        if self.partials >= self.fresh_partials and self.raw:
            previous = await roll_back(self.raw, self.rollback_tokens, encode, decode)
        return self._header() + previous

    def accept_partial(self, continuation: str, generated: Generated) -> tuple[str | None, str, tuple[TokenSpan, ...]]:
        """Record a finished partial (prompted with `continuation`): its language, text and spans."""
        self.partials += 1
        kept = continuation.removeprefix(self._header())
        # the rolled-back prefix is the start of the last raw output: its tokens' sureness stays known
        carried = (
            [
                TokenSpan(span.start, min(span.end, len(kept)), span.logprob)
                for span in self.raw_spans
                if span.start < len(kept)
            ]
            if self.raw.startswith(kept)
            else []
        )
        self.raw = kept + generated.text
        self.raw_spans = (*carried, *generated.spans(len(kept)))
        language, text = parse_output(self.raw, self.forced_language)
        return language, text, transcript_spans(self.raw, text, self.raw_spans)

    def final_continuation(self) -> str:
        """Assistant prefix of the final: a fresh decode, only the forced language's header."""
        return self._header()

    def final_result(self, generated: Generated) -> tuple[str | None, str, tuple[TokenSpan, ...]]:
        """A final's language, text and spans."""
        language, text = parse_output(generated.text, self.forced_language)
        return language, text, transcript_spans(generated.text, text, generated.spans())

    def _header(self) -> str:
        return language_header(self.forced_language) if self.forced_language else ""


class Qwen3Decoder(Protocol):
    """What an engine does for its Qwen3-ASR streams: tokenize (for rollback) and decode audio."""

    async def encode(self, text: str) -> Sequence[int]: ...

    async def decode_tokens(self, ids: Sequence[int]) -> str: ...

    async def continue_decode(
        self, context: str, continuation: str, audio: Audio, *, final: bool, sureness: bool
    ) -> Generated:
        """What the assistant writes after `continuation` for `audio` with `context` as the system
        turn; with `sureness`, each token's log-probability too. Cancelling it aborts the decode
        where it runs."""
        ...


class Qwen3Stream(EngineStream):
    """One utterance: partials continue the previous one minus its last tokens, the final starts afresh.

    A stream with names asks the model how sure it was of each token (`Transcript.token_spans`), so
    the names' correction leaves alone words the model was sure of, as it does Whisper's.
    """

    def __init__(
        self, decoder: Qwen3Decoder, utterance: Qwen3Utterance, context: str, context_tokens: int, *, sureness: bool
    ) -> None:
        self._decoder = decoder
        self._utterance = utterance
        self._context = context
        self._context_tokens = context_tokens
        self._sureness = sureness
        self._fitted_context: str | None = None

    async def partial(self, audio: Audio) -> Transcript:
        context = await self._context_that_fits()
        continuation = await self._utterance.partial_continuation(self._decoder.encode, self._decoder.decode_tokens)
        generated = await self._decoder.continue_decode(
            context, continuation, audio, final=False, sureness=self._sureness
        )
        language, text, spans = self._utterance.accept_partial(continuation, generated)
        return Transcript(text, language, generated.tokens, token_spans=spans)

    async def final(self, audio: Audio) -> Transcript:
        context = await self._context_that_fits()
        continuation = self._utterance.final_continuation()
        generated = await self._decoder.continue_decode(
            context, continuation, audio, final=True, sureness=self._sureness
        )
        language, text, spans = self._utterance.final_result(generated)
        return Transcript(text, language, generated.tokens, token_spans=spans)

    async def _context_that_fits(self) -> str:
        """The context cut to `context_tokens` (`first_tokens`), worked out once for the utterance."""
        if self._fitted_context is None:
            self._fitted_context = await first_tokens(
                self._context, self._context_tokens, self._decoder.encode, self._decoder.decode_tokens
            )
        return self._fitted_context


@dataclass(frozen=True)
class Qwen3Decoding:
    """How an utterance is streamed, the same wherever the model runs (in process or on servers)."""

    max_new_tokens: int = 512
    """Most tokens one decode may write."""
    rollback_tokens: int = 5
    fresh_partials: int = 2
    """See `Qwen3Utterance`."""
    ignore_eos: bool = False
    """Every decode writes exactly `max_new_tokens` (tests with random weights)."""
    max_context_tokens: int = 1024
    """Most tokens of context a decode is prompted with; the end of a longer one (the household's
    last names) is left out. The model's length must hold this, the longest utterance's audio (13
    tokens a second) and twice `max_new_tokens` (a partial's continuation and what it writes)."""

    def open_stream(self, decoder: Qwen3Decoder, options: StreamOptions) -> Qwen3Stream:
        utterance = Qwen3Utterance.for_language(options.language, self.rollback_tokens, self.fresh_partials)
        return Qwen3Stream(
            decoder, utterance, plain_context(options.context), self.max_context_tokens, sureness=bool(options.names)
        )
