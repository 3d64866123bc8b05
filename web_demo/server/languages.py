"""Language names as clients send them, and the ISO-639-1 codes engines take.

Clients of `/api/transcribe` write the deployment plan's Chinese names (中文, 英文, 日文,
粤语, ... as Fun-ASR names them); OpenAI clients send ISO-639-1 codes (zh, en, ja). Engines
always get the code (or None: detect). The answer names the language the way the client
asked: a Chinese name for a Chinese name, a code for a code. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from web_demo.server.errors import BadRequest

# Every code Whisper knows (its 99 languages plus yue); other engines accept a subset and
# answer the rest with a 400 of their own (see tests/unit/test_languages.py).
_WHISPER_CODES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw "
    "he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt "
    "my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl "
    "tr tt uk ur uz vi yi yo zh yue")
ISO_CODES = frozenset(_WHISPER_CODES.split())

# code -> (Fun-ASR's Chinese name, English name as OpenAI's verbose_json writes it): the
# languages of Fun-ASR-Nano and Fun-ASR-MLT-Nano, and a few more common ones.
_NAMES: dict[str, tuple[str, str]] = {
    "zh": ("中文", "chinese"), "en": ("英文", "english"), "ja": ("日文", "japanese"),
    "yue": ("粤语", "cantonese"), "ko": ("韩文", "korean"), "vi": ("越南语", "vietnamese"),
    "id": ("印尼语", "indonesian"), "th": ("泰语", "thai"), "ms": ("马来语", "malay"),
    "tl": ("菲律宾语", "tagalog"), "ar": ("阿拉伯语", "arabic"), "hi": ("印地语", "hindi"),
    "bg": ("保加利亚语", "bulgarian"), "hr": ("克罗地亚语", "croatian"), "cs": ("捷克语", "czech"),
    "da": ("丹麦语", "danish"), "nl": ("荷兰语", "dutch"), "et": ("爱沙尼亚语", "estonian"),
    "fi": ("芬兰语", "finnish"), "el": ("希腊语", "greek"), "hu": ("匈牙利语", "hungarian"),
    "ga": ("爱尔兰语", "irish"), "lv": ("拉脱维亚语", "latvian"), "lt": ("立陶宛语", "lithuanian"),
    "mt": ("马耳他语", "maltese"), "pl": ("波兰语", "polish"), "pt": ("葡萄牙语", "portuguese"),
    "ro": ("罗马尼亚语", "romanian"), "sk": ("斯洛伐克语", "slovak"), "sl": ("斯洛文尼亚语", "slovenian"),
    "sv": ("瑞典语", "swedish"), "de": ("德语", "german"), "fr": ("法语", "french"),
    "es": ("西班牙语", "spanish"), "it": ("意大利语", "italian"), "ru": ("俄语", "russian"),
    "tr": ("土耳其语", "turkish"), "uk": ("乌克兰语", "ukrainian"),
}
_ALIASES = {"汉语": "zh", "普通话": "zh", "英语": "en", "日语": "ja", "韩语": "ko", "广东话": "yue"}
AUTO_NAMES = frozenset({"", "auto", "自动", "自动检测"})
DEFAULT_PLAN_LANGUAGE = "中文"  # /api/transcribe without a language field

_CODES = ISO_CODES | set(_NAMES)
_BY_NAME = {chinese: code for code, (chinese, _) in _NAMES.items()} | _ALIASES
_BY_NAME |= {english: code for code, (_, english) in _NAMES.items()}


@dataclass(frozen=True)
class Language:
    """What the client asked for: its own spelling, and the code the engine gets."""
    asked: str  # as sent, e.g. "中文", "zh", "auto"
    code: str | None  # ISO-639-1 (yue for Cantonese); None = detect
    chinese_style: bool  # the client writes names (中文), not codes

    def answer(self, detected: str | None) -> str:
        """The language to answer with: as asked, or for auto the detected one in the same style."""
        if self.code is not None or detected is None:
            return self.asked
        return chinese_name(detected) if self.chinese_style else detected


def parse_language(value: str | None, *, default: str | None = None, param: str = "language") -> Language:
    """A client's language field -> Language; an unknown name is a 400 naming `param`."""
    asked = (value if value is not None else default or "").strip()
    key = asked.lower()
    if key in AUTO_NAMES:
        return Language(asked or "auto", None, chinese_style=not asked.isascii())
    if key in _CODES:
        return Language(asked, key, chinese_style=False)
    code = _BY_NAME.get(key) or _BY_NAME.get(asked)
    if code is not None:
        return Language(asked, code, chinese_style=not asked.isascii())
    raise BadRequest(f"unknown language {asked[:40]!r}: send an ISO-639-1 code (zh, en, ja, yue, ...), "
                     "a name (中文, 英文, 日文, 粤语, ...) or auto (自动)", param=param)


def chinese_name(code: str) -> str:
    return _NAMES[code][0] if code in _NAMES else code


def english_name(code: str | None) -> str:
    """OpenAI's verbose_json spelling ("english"); unknown codes stay codes."""
    if code is None:
        return "unknown"
    return _NAMES[code][1] if code in _NAMES else code
