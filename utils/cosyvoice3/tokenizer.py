"""The CosyVoice3 text tokenizer: Qwen2 byte-level BPE plus CosyVoice3's 280 special tokens.

The release ships the Qwen2 tokenizer in `CosyVoice-BlankEN/` (vocab.json + merges.txt; the
golden stand-in in tests/fixtures/cosyvoice3_tts/tokenizer/ is a tokenizer.json). Upstream
loads it with `AutoTokenizer` and then calls `add_special_tokens` once with the list below;
`transformers` gives every new string the next free id in list order and skips the strings
that already exist (`<|im_start|>`, `<|im_end|>`), so `<|endofprompt|>` lands on 151646 and
`[ǜ]` on 151923. We do the same call, so the ids follow from the order of this table alone.
Spec: specs/cosyvoice3-tts.md §4.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

ENDOFTEXT = "<|endoftext|>"
ENDOFPROMPT = "<|endofprompt|>"
# Upstream HEAD hard-codes this id; 2db78e7 derives it from the tokenizer like we do.
ENDOFPROMPT_ID = 151646
# Rows of the Qwen2 text embedding (`embed_tokens`); every text id must index it.
TEXT_EMBEDDING_ROWS = 151936

_MARKUP = (
    "<|im_start|> <|im_end|> <|endofprompt|> [breath] <strong> </strong> [noise] [laughter] [cough] "
    "[clucking] [accent] [quick_breath] <laughter> </laughter> [hissing] [sigh] [vocalized-noise] "
    "[lipsmack] [mn] <|endofsystem|>"
)
# ARPAbet phones; vowels come bare and with stress 0/1/2, in alphabetical order.
_ARPABET = (
    "AA AA0 AA1 AA2 AE AE0 AE1 AE2 AH AH0 AH1 AH2 AO AO0 AO1 AO2 AW AW0 AW1 AW2 AY AY0 AY1 AY2 "
    "B CH D DH EH EH0 EH1 EH2 ER ER0 ER1 ER2 EY EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY IY0 IY1 IY2 "
    "JH K L M N NG OW OW0 OW1 OW2 OY OY0 OY1 OY2 P R S SH T TH UH UH0 UH1 UH2 UW UW0 UW1 UW2 "
    "V W Y Z ZH"
)
# Pinyin initials and toned finals, in upstream's (code-point sorted) order.
_PINYIN = (
    "a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè "
    "ié iòng ióng iù iú iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou "
    "p q r s sh t u uang ue un uo uà uài uàn uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān "
    "uāng uē uě uī uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z zh à ài àn àng ào á ái án áng áo è èi èn "
    "èng èr é éi én éng ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú ún ā āi ān āng āo ē ēi ēn "
    "ēng ě ěi ěn ěng ěr ī īn īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ"
)

# The `additional_special_tokens` of upstream's CosyVoice3Tokenizer, in its order (280 strings,
# of which the first two already exist in the Qwen2 vocabulary).
SPECIAL_TOKENS: tuple[str, ...] = (
    *_MARKUP.split(),
    *(f"[{p}]" for p in _ARPABET.split()),
    *(f"[{p}]" for p in _PINYIN.split()),
)


class CosyVoice3Tokenizer:
    """Text <-> ids for the CosyVoice3 LLM. Owns one HF fast tokenizer; stateless per call.

    Special tokens match anywhere in the text (no normalisation, no word boundary), so
    `"[j][ǐ]"` is two ids. The release yaml's `allowed_special: 'all'` has no effect upstream
    and has no counterpart here.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase) -> None:
        self._hf = hf_tokenizer

    @classmethod
    def from_dir(cls, path: str | Path, *, embedding_rows: int = TEXT_EMBEDDING_ROWS) -> CosyVoice3Tokenizer:
        """Load a Qwen2 tokenizer folder (e.g. `<model_dir>/CosyVoice-BlankEN`) and add the specials.

        Raises ValueError when an id would not fit the text embedding: a base vocabulary larger
        than Qwen2's 151646 entries pushes the specials past row 151935 (the Fun-Audio-Chat
        substitute tokenizer does exactly that).
        """
        hf = AutoTokenizer.from_pretrained(str(path))
        specials = {"eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT}
        hf.add_special_tokens({**specials, "additional_special_tokens": list(SPECIAL_TOKENS)})
        tok = cls(hf)
        largest = max(tok.special_token_ids().values())
        if largest >= embedding_rows:
            raise ValueError(f"{path}: special token id {largest} does not fit {embedding_rows} text rows")
        return tok

    def encode(self, text: str) -> list[int]:
        """`input_ids` of `text`: no BOS/EOS is added (Qwen2 adds none)."""
        return list(self._hf(text)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` with every special token dropped, as upstream decodes."""
        return str(self._hf.decode(list(ids), skip_special_tokens=True))

    def token_id(self, token: str) -> int:
        """Id of one whole token string (e.g. `"<|endofprompt|>"`); KeyError if unknown."""
        found = self._hf.convert_tokens_to_ids(token)
        if not isinstance(found, int) or found == self._hf.unk_token_id:
            raise KeyError(token)
        return found

    def special_token_ids(self) -> dict[str, int]:
        """`<|endoftext|>` and every CosyVoice3 special token with its id."""
        return {t: self.token_id(t) for t in (ENDOFTEXT, *SPECIAL_TOKENS)}

    @property
    def endofprompt_id(self) -> int:
        return self.token_id(ENDOFPROMPT)

    def __len__(self) -> int:
        return len(self._hf)
