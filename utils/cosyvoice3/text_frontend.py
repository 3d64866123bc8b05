"""CosyVoice3's text front end: normalisation backend, `text_normalize` and sentence splitting.

Spec: specs/cosyvoice3-tts.md §4.1-4.3 (upstream CosyVoice 2db78e7, `CosyVoiceFrontEnd`).

Backend. Upstream tries ttsfrd, then wetext, and silently falls back to no normalisation
(backend '') on any failure. Its wetext pin (0.0.4) downloads the FSTs from ModelScope in the
constructor, so an offline upstream server runs with backend ''. We run wetext 0.0.4's
algorithm (digit gate, zh/en pick, tagger -> token reorder -> verbalizer, `WetextNormalizer`)
on the FSTs that the wetext 0.1.8 wheel bundles, so 'wetext' works offline. Pass
`backend=""` to reproduce what an offline upstream produces. ttsfrd (not usable from PyPI)
is not supported.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, overload

import inflect
import regex  # type: ignore[import-untyped]  # \p{P}/\p{S} classes; stdlib re has none

logger = logging.getLogger(__name__)

Backend = Literal["wetext", ""]
Lang = Literal["zh", "en"]

_CJK = re.compile(r"[\u4e00-\u9fff]")
# wetext 0.0.4 only normalises text with a digit; str patterns' \d is any Unicode decimal digit.
_DIGIT = re.compile(r"\d")
_TRAILING_COMMAS = re.compile(r"[，,、]+$")
_ONLY_PUNCTUATION = regex.compile(r"[\p{P}\p{S}]*")

SENTENCE_ENDS: dict[Lang, str] = {"zh": "。？！；：、.?!;", "en": ".?!;:"}
_CLOSING_QUOTES = ('"', "”")


class Encoder(Protocol):
    """What the front end needs of a tokenizer: English segment lengths count its ids."""

    def encode(self, text: str) -> list[int]: ...


def contains_chinese(text: str) -> bool:
    """Any CJK unified ideograph (U+4E00..U+9FFF); picks the zh branch here and in wetext."""
    return _CJK.search(text) is not None


# ---------------------------------------------------------------------------------------------
# wetext 0.0.4 semantics on kaldifst


# Member order the verbalizers expect, per token name (wetext 0.0.4 `TN_ORDERS` and
# `EN_TN_ORDERS`); other token names keep the tagger's order.
_ZH_TN_ORDERS: dict[str, tuple[str, ...]] = {
    "date": ("year", "month", "day"),
    "fraction": ("denominator", "numerator"),
    "measure": ("denominator", "numerator", "value"),
    "money": ("value", "currency"),
    "time": ("noon", "hour", "minute", "second"),
}
_EN_TN_ORDERS: dict[str, tuple[str, ...]] = {
    "date": ("preserve_order", "text", "day", "month", "year"),
    "money": ("integer_part", "fractional_part", "quantity", "currency_maj"),
}
_TOKEN_OPEN = re.compile(r" *([A-Za-z_]*) *\{")
_TOKEN_MEMBER = re.compile(r' *([A-Za-z_]*) *: *"((?:[^"\\]|\\.)*)"', re.DOTALL)
_TOKEN_CLOSE = re.compile(r" *\}")


@dataclass
class _TaggedToken:
    name: str
    keys: list[str]
    values: dict[str, str]

    def serialise(self, orders: dict[str, tuple[str, ...]]) -> str:
        keys: list[str] | tuple[str, ...] = self.keys
        if self.name in orders and self.values.get("preserve_order") != "true":
            keys = orders[self.name]  # members the canonical order lacks are dropped, as in wetext
        members = "".join(f' {k}: "{self.values[k]}"' for k in keys if k in self.values)
        return f"{self.name} {{{members} }}"


def _parse_tagged(tagged: str) -> list[_TaggedToken]:
    """Split the tagger's `name { key: "value" ... } ...` output into tokens (values kept escaped)."""
    tokens: list[_TaggedToken] = []
    pos = 0
    while (opened := _TOKEN_OPEN.match(tagged, pos)) is not None:
        token = _TaggedToken(opened.group(1), [], {})
        pos = opened.end()
        while (member := _TOKEN_MEMBER.match(tagged, pos)) is not None:
            token.keys.append(member.group(1))
            token.values[member.group(1)] = member.group(2)
            pos = member.end()
        closed = _TOKEN_CLOSE.match(tagged, pos)
        if closed is None:
            raise ValueError(f"malformed tagger output at {pos}: {tagged!r}")
        pos = closed.end()
        tokens.append(token)
    if tagged[pos:].strip(" "):
        raise ValueError(f"malformed tagger output at {pos}: {tagged!r}")
    return tokens


def reorder_tagged(tagged: str, lang: Lang) -> str:
    """wetext's TokenParser.reorder for TN: members into the order the verbalizer FST reads."""
    orders = _ZH_TN_ORDERS if lang == "zh" else _EN_TN_ORDERS
    return " ".join(token.serialise(orders) for token in _parse_tagged(tagged))


def bundled_wetext_fst_dir() -> Path | None:
    """`fsts/` inside the installed wetext package (0.1.x wheels ship them), or None.

    Found without importing wetext: 0.1.x loads every FST of every language at import time.
    """
    spec = importlib.util.find_spec("wetext")
    if spec is None or not spec.submodule_search_locations:
        return None
    fst_dir = Path(next(iter(spec.submodule_search_locations))) / "fsts"
    return fst_dir if fst_dir.is_dir() else None


@dataclass(frozen=True)
class WetextNormalizer:
    """wetext 0.0.4 `Normalizer(lang="auto", operator="tn", remove_erhua=False)`.

    One object stands for both of upstream's normalisers (its zh and en ones are built the
    same way and both pick the language from the text). `fst_dir` has the ModelScope
    `pengzhendong/wetext` layout: `{zh,en}/tn/{tagger,verbalizer}.fst`.
    """

    fst_dir: Path
    _graphs: dict[str, tuple[Callable[[str], str], Callable[[str], str]]]

    @classmethod
    def load(cls, fst_dir: str | Path) -> WetextNormalizer:
        import kaldifst  # type: ignore[import-untyped]  # optional, only this backend needs it

        fst_dir = Path(fst_dir)
        graphs = {}
        for lang in ("zh", "en"):
            paths = [fst_dir / lang / "tn" / f"{part}.fst" for part in ("tagger", "verbalizer")]
            for path in paths:
                if not path.is_file():
                    raise FileNotFoundError(path)
            tagger, verbalizer = (kaldifst.TextNormalizer(str(p)) for p in paths)
            graphs[lang] = (tagger.normalize, verbalizer.normalize)
        return cls(fst_dir, graphs)

    def normalize(self, text: str) -> str:
        """TN of `text`; text without a digit is returned as it is.

        When an FST has no path for the text (kaldifst then returns ''; the en tagger does so
        for a double space or a newline) the text is kept unnormalised. Upstream fails
        there instead (wetext 0.0.4 asserts on the empty tagging; an empty verbalisation
        makes split_paragraph raise).
        """
        if not _DIGIT.search(text):
            return text
        lang: Lang = "zh" if contains_chinese(text) else "en"
        tag, verbalize = self._graphs[lang]
        tagged = str(tag(text))
        spoken = str(verbalize(reorder_tagged(tagged, lang))) if tagged else ""
        if not spoken:
            logger.warning("wetext %s found no normalisation for %r; kept as it is", lang, text)
            return text
        return spoken


def select_backend(
    backend: Literal["auto", "wetext", ""] = "auto", *, fst_dir: str | Path | None = None
) -> WetextNormalizer | None:
    """The normaliser to use, once at construction (spec §4.1).

    "auto": wetext when its FSTs load (from `fst_dir`, else the installed wheel), else None
    with a warning, as upstream falls back. "wetext": the same but a failure raises.
    "": no normalisation.
    """
    if backend == "":
        return None
    try:
        where = Path(fst_dir) if fst_dir is not None else bundled_wetext_fst_dir()
        if where is None:
            raise FileNotFoundError("no fst_dir given and no installed wetext package ships fsts/")
        return WetextNormalizer.load(where)
    except (ImportError, OSError) as exc:
        if backend == "wetext":
            raise
        logger.warning("wetext normaliser unavailable (%s); text is not normalised", exc)
        return None


# ---------------------------------------------------------------------------------------------
# rule-based cleanup


def replace_blank(text: str) -> str:
    """Keep a space only between two ASCII non-space characters (spaces next to CJK go).

    A space at either end has a missing neighbour and goes too (upstream would read text[-1]
    at the start and raise at the end; stripped input never has one).
    """
    kept = []
    for i, c in enumerate(text):
        if c == " ":
            before = text[i - 1] if i > 0 else ""
            after = text[i + 1] if i + 1 < len(text) else ""
            if not all(n.isascii() and n not in ("", " ") for n in (before, after)):
                continue
        kept.append(c)
    return "".join(kept)


def spell_out_numbers(text: str, engine: inflect.engine) -> str:
    """Every maximal run of `str.isdigit` characters -> inflect words (`12` -> `twelve`).

    `isdigit` (not ASCII-only) as upstream, so e.g. `²` becomes inflect's `zero`.
    """
    out: list[str] = []
    start: int | None = None
    for i, c in enumerate(text):
        if c.isdigit():
            if start is None:
                start = i
            continue
        if start is not None:
            out.append(str(engine.number_to_words(text[start:i])))
            start = None
        out.append(c)
    if start is not None:
        out.append(str(engine.number_to_words(text[start:])))
    return "".join(out)


def is_only_punctuation(text: str) -> bool:
    """Empty, or only Unicode punctuation (P*) and symbols (S*): such segments are dropped."""
    return _ONLY_PUNCTUATION.fullmatch(text) is not None


def clean_chinese(text: str) -> str:
    """The zh branch's rules after wetext, in upstream's order (spec §4.2)."""
    text = replace_blank(text.replace("\n", ""))
    text = text.replace("²", "平方").replace("³", "立方")
    text = text.replace(".", "。").replace(" - ", "，")  # " - " never survives replace_blank next to CJK
    for bracket in ("（", "）", "【", "】", "`"):
        text = text.replace(bracket, "")
    text = text.replace("——", " ")
    return _TRAILING_COMMAS.sub("。", text)


# ---------------------------------------------------------------------------------------------
# splitting


def _sentences(text: str, ends: str) -> list[str]:
    """Cut after every sentence end; a closing quote right after an end joins its piece."""
    pieces: list[str] = []
    start = 0
    i = 0
    while i < len(text):
        if text[i] in ends:
            if i > start:  # an end right after a cut (e.g. the 2nd "." of "...") is dropped
                pieces.append(text[start : i + 1])
            if i + 1 < len(text) and text[i + 1] in _CLOSING_QUOTES:
                # The quote joins the last piece even when this end emitted none (upstream
                # raises when there is no piece yet; we start one).
                if pieces:
                    pieces[-1] += text[i + 1]
                else:
                    pieces.append(text[i + 1])
                i += 1
            start = i + 1
        i += 1
    return pieces


def split_paragraph(
    text: str,
    lang: Lang,
    length: Callable[[str], int],
    *,
    max_len: int = 80,
    min_len: int = 60,
    merge_len: int = 20,
    comma_split: bool = False,
) -> list[str]:
    """Sentences of `text` merged greedily into segments of about `min_len`..`max_len` (spec §4.3).

    `length` measures a string: characters for zh, tokenizer ids for en (upstream counts
    tokens there, so English cut points depend on the tokenizer).
    """
    if not text:
        return []  # upstream raises IndexError on an empty paragraph
    ends = SENTENCE_ENDS[lang] + ("，," if comma_split else "")
    if text[-1] not in ends:
        text += "。" if lang == "zh" else "."
    segments: list[str] = []
    current = ""
    for piece in _sentences(text, ends):
        if length(current + piece) > max_len and length(current) > min_len:
            segments.append(current)
            current = ""
        current += piece
    if current:
        if segments and length(current) < merge_len:
            segments[-1] += current  # a short tail joins the previous segment
        else:
            segments.append(current)
    return segments


# ---------------------------------------------------------------------------------------------
# the front end


class TextFrontend:
    """Normalises and splits tts text for one model; owns its backend, shared read-only.

    `tokenizer` only measures English segment lengths here; ids are made by the caller.
    """

    def __init__(
        self,
        tokenizer: Encoder,
        *,
        backend: Literal["auto", "wetext", ""] = "auto",
        fst_dir: str | Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self._normalizer = select_backend(backend, fst_dir=fst_dir)
        self._inflect = inflect.engine()

    @property
    def backend(self) -> Backend:
        return "wetext" if self._normalizer is not None else ""

    def _tn(self, text: str) -> str:
        return self._normalizer.normalize(text) if self._normalizer is not None else text

    def _token_count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    @overload
    def text_normalize(
        self, text: str, *, split: Literal[True] = ..., text_frontend: bool = ...
    ) -> list[str]: ...
    @overload
    def text_normalize(self, text: str, *, split: Literal[False], text_frontend: bool = ...) -> str: ...
    @overload
    def text_normalize(
        self, text: Iterator[str], *, split: bool = ..., text_frontend: bool = ...
    ) -> list[Iterator[str]]: ...

    def text_normalize(
        self, text: str | Iterator[str], *, split: bool = True, text_frontend: bool = True
    ) -> list[str] | str | list[Iterator[str]]:
        """Upstream's `text_normalize` (spec §4.2): segments (split=True) or the normalised text.

        A generator (text-in streaming) is passed through as `[text]`. Text with both `<|` and
        `|>` (every `<|endofprompt|>` prompt) is neither normalised nor split.
        """
        if not isinstance(text, str):
            return [text]
        if not text_frontend or text == "" or ("<|" in text and "|>" in text):
            return [text] if split else text
        text = text.strip()
        lang: Lang = "zh" if contains_chinese(text) else "en"
        if lang == "zh":
            text = clean_chinese(self._tn(text))
        else:
            text = spell_out_numbers(self._tn(text), self._inflect)
        if not split:
            return text
        segments = split_paragraph(text, lang, len if lang == "zh" else self._token_count)
        return [s for s in segments if not is_only_punctuation(s)]
