"""Languages by their three-letter ISO 639-3 codes ("eng"), as ElevenLabs' APIs name them, beside
the two-letter ISO 639-1 codes ("en") the engines use. ElevenLabs' clients send either (Pipecat's
the three-letter one), and its answers carry the three-letter one.
"""

from __future__ import annotations

from collections.abc import Sequence

from satellite_asr.core import Core
from satellite_asr.protocols import checked_language

THREE_LETTER = {
    "af": "afr",
    "am": "amh",
    "ar": "ara",
    "as": "asm",
    "az": "aze",
    "ba": "bak",
    "be": "bel",
    "bg": "bul",
    "bn": "ben",
    "bo": "bod",
    "br": "bre",
    "bs": "bos",
    "ca": "cat",
    "cs": "ces",
    "cy": "cym",
    "da": "dan",
    "de": "deu",
    "el": "ell",
    "en": "eng",
    "es": "spa",
    "et": "est",
    "eu": "eus",
    "fa": "fas",
    "fi": "fin",
    "fo": "fao",
    "fr": "fra",
    "gl": "glg",
    "gu": "guj",
    "ha": "hau",
    "he": "heb",
    "hi": "hin",
    "hr": "hrv",
    "ht": "hat",
    "hu": "hun",
    "hy": "hye",
    "id": "ind",
    "is": "isl",
    "it": "ita",
    "ja": "jpn",
    "jw": "jav",
    "ka": "kat",
    "kk": "kaz",
    "km": "khm",
    "kn": "kan",
    "ko": "kor",
    "la": "lat",
    "lb": "ltz",
    "ln": "lin",
    "lo": "lao",
    "lt": "lit",
    "lv": "lav",
    "mg": "mlg",
    "mi": "mri",
    "mk": "mkd",
    "ml": "mal",
    "mn": "mon",
    "mr": "mar",
    "ms": "msa",
    "mt": "mlt",
    "my": "mya",
    "ne": "nep",
    "nl": "nld",
    "nn": "nno",
    "no": "nor",
    "oc": "oci",
    "pa": "pan",
    "pl": "pol",
    "ps": "pus",
    "pt": "por",
    "ro": "ron",
    "ru": "rus",
    "sa": "san",
    "sd": "snd",
    "si": "sin",
    "sk": "slk",
    "sl": "slv",
    "sn": "sna",
    "so": "som",
    "sq": "sqi",
    "sr": "srp",
    "su": "sun",
    "sv": "swe",
    "sw": "swa",
    "ta": "tam",
    "te": "tel",
    "tg": "tgk",
    "th": "tha",
    "tk": "tuk",
    "tl": "fil",
    "tr": "tur",
    "tt": "tat",
    "uk": "ukr",
    "ur": "urd",
    "uz": "uzb",
    "vi": "vie",
    "yi": "yid",
    "yo": "yor",
    "zh": "zho",
}
"""The engines' two-letter languages (Whisper's; Qwen3-ASR's are among them) by their ISO 639-3
code, as ElevenLabs names them: Whisper's Tagalog `tl` is ElevenLabs' Filipino, `fil` (ISO 639-3
`tgl`). Whisper names Javanese `jw` (ISO 639-1 says `jv`); its `haw` and `yue`, and Qwen3-ASR's
`fil`, are three-letter codes already."""
TWO_LETTER = {three: two for two, three in THREE_LETTER.items()} | {
    "tgl": "tl",
    "jv": "jw",
    "nb": "no",
    "nob": "no",
    "cmn": "zh",
}
"""A client's code as the engines' two-letter one: Filipino (`fil`, `tgl`) as Tagalog (for Whisper),
`jv` as Whisper's `jw`, Norwegian Bokmål as Norwegian and Mandarin as Chinese (Whisper's `no` and `zh`)."""


def engine_language(core: Core, code: object, param: str) -> str | None:
    """The engine's code for a language a client named by either ISO code (`checked_language`): a
    three-letter one is tried as its two-letter twin first, then as it is (Qwen3-ASR's `fil`)."""
    if isinstance(code, str):
        twin = TWO_LETTER.get(code.lower())
        if twin is not None and core.engine_info.supported_language(twin) is not None:
            return checked_language(core, twin, param)
    return checked_language(core, code, param)


def declared_language(
    core: Core, main: tuple[str, object], secondary: Sequence[tuple[str, object]], detect: bool
) -> str | None:
    """The language to decode in (every code checked, each given as `(parameter, code)`): the `main`
    one a client named, else the `language` setting; None (the engine detects each utterance's)
    when other languages may be spoken alongside it (`secondary`), when there is none, or when the
    client asked to `detect` and named none."""
    param, code = main
    named = engine_language(core, code, param)
    others = {engine_language(core, other, name) for name, other in secondary} - {None}
    language = named or core.settings.default_language
    if (detect and named is None) or (others and (language is None or others - {language})):
        return None
    return language


def three_letter(code: str) -> str:
    """An engine's language as ElevenLabs names it (`en` -> `eng`); a code without a twin as it is."""
    return THREE_LETTER.get(code, code)
