"""CosyVoice3 text-to-speech: front end -> LLM -> token2wav, per sentence (tts spec §1, §8, §9).

`CosyVoice3Tts` owns the shared, read-only parts of one model directory (LLM, flow + HiFT,
tokenizer and text front end, prompt ONNX models, shipped speakers). Per request it
normalises and splits the text; each segment is one LLM run and one token2wav run with the
same voice prompt (a `Speaker`). All per-request state (KV cache, random generator,
token2wav stream) lives in the request's generator, so concurrent requests share nothing
mutable. With a `TokenSource` (our TTSScheduler, tts_scheduler.py, or vLLM, vllm_llm.py) the
LLM half of every request runs in one batched step; without one each segment decodes alone.

Modes (spec §4.5): zero_shot (prompt text + prompt speech to the LLM), cross_lingual (LLM
gets neither), instruct2 (LLM gets the instruct text), sft (embedding only, no flow prompt).
The flow always gets the speaker's prompt tokens, mel and embedding.

Directory layouts: release (cosyvoice3.yaml, llm.pt, flow.pt, hift.pt, campplus.onnx,
speech_tokenizer_v3.onnx, CosyVoice-BlankEN/, optional spk2info.pt) and test
(llm_config.json + llm.safetensors, flow/hift config json + safetensors, the two ONNX files,
CosyVoice-BlankEN/ with a tokenizer; a `tiny_`-style prefix is allowed, see loading.py).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from .llm import CosyVoice3LM
from .llm_decode import LengthLimits, TokenDecoder
from .llm_loading import load_llm
from .onnx_models import PromptEncoders
from .prompt_features import PromptFeatures
from .ras_sampling import RasConfig, SamplingFailed
from .speakers import Speaker, build_speaker, embedding_speaker, load_speaker, load_spk2info, speaker_from_wav
from .streaming import Token2Wav
from .text_frontend import TextFrontend
from .text_inputs import LlmText, Mode, cross_lingual, instruct2, sft
from .tokenizer import CosyVoice3Tokenizer
from .tts_scheduler import request_generator
from .tts_token2wav import Schedule, new_prompted_stream, offline_prompted

logger = logging.getLogger(__name__)


class ScheduledTokens(Protocol):
    """One submitted segment's speech tokens, iterated as they are produced."""

    tokens: list[int]
    done: threading.Event

    def cancel(self) -> None: ...

    def __iter__(self) -> Iterator[int]: ...


class TokenSource(Protocol):
    """Decodes many segments at once: our TTSScheduler, or vLLM (vllm_llm.py)."""

    def submit(self, lm_input: Tensor, limits: LengthLimits, *, sampler: RasConfig | None = None,
               generator: torch.Generator | None = None) -> ScheduledTokens: ...

TOKENIZER_DIR = "CosyVoice-BlankEN"
SPK2INFO_FILE = "spk2info.pt"


@dataclass(frozen=True)
class SegmentResult:
    """One segment of a non-stream synthesis."""

    text: LlmText
    tokens: list[int]
    audio: np.ndarray  # float32 [n] at 24 kHz


class CosyVoice3Tts:
    def __init__(self, lm: CosyVoice3LM, token2wav: Token2Wav, frontend: TextFrontend,
                 encoders: PromptEncoders | None, *, speakers: dict[str, Speaker] | None = None,
                 sampler: RasConfig | None = None, scheduler: TokenSource | None = None) -> None:
        self.lm = lm
        self.scheduler = scheduler
        self.token2wav = token2wav
        self.frontend = frontend
        self.encoders = encoders
        self.speakers = dict(speakers or {})
        self.sampler = sampler or lm.cfg.sampler

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, sine_samples: int | None = None,
                       text_backend: Literal["auto", "wetext", ""] = "auto") -> CosyVoice3Tts:
        """Load a release or test layout (module docstring). `sine_samples` caps the vocoder's
        fixed noise (default upstream's 300 s; only bounds the longest segment)."""
        root = Path(model_dir)
        lm = load_llm(root, device=device, dtype=dtype)
        token2wav = Token2Wav.from_model_dir(root, device=device, dtype=dtype, sine_samples=sine_samples)
        tokenizer = CosyVoice3Tokenizer.from_dir(root / TOKENIZER_DIR)
        frontend = TextFrontend(tokenizer, backend=text_backend)
        encoders = PromptEncoders.from_model_dir(root, use_cuda=torch.device(device).type == "cuda")
        spk2info = root / SPK2INFO_FILE
        speakers = load_spk2info(spk2info) if spk2info.is_file() else {}
        logger.info("CosyVoice3 TTS from %s: %d shipped speakers, text backend %r",
                    root, len(speakers), frontend.backend or "none")
        return cls(lm, token2wav, frontend, encoders, speakers=speakers)

    @property
    def sample_rate(self) -> int:
        return self.token2wav.sample_rate

    # ------------------------------------------------------------------ speakers

    def make_speaker(self, prompt_wav: str | Path | tuple[Tensor, int], prompt_text: str | None) -> Speaker:
        """A prompt WAV (path, or ([1, N] float32, rate)) + its transcript -> Speaker."""
        if self.encoders is None:
            raise RuntimeError("this model has no prompt ONNX models")
        if isinstance(prompt_wav, tuple):
            return build_speaker(prompt_wav[0], prompt_wav[1], prompt_text, self.frontend, self.encoders)
        return speaker_from_wav(prompt_wav, prompt_text, self.frontend, self.encoders)

    def speaker(self, name: str) -> Speaker:
        """A shipped speaker id (spk2info.pt), or the path of a saved speaker file."""
        if name in self.speakers:
            return self.speakers[name]
        if Path(name).is_file():
            return load_speaker(name)
        raise KeyError(f"unknown speaker {name!r}; shipped: {sorted(self.speakers)}")

    # ------------------------------------------------------------------ text

    def segments(self, text: str, mode: Mode | str, speaker: Speaker, *,
                 instruct: str | None = None, text_frontend: bool = True) -> list[LlmText]:
        """The LLM text of each segment (normalised and split by the front end)."""
        mode = Mode(mode)
        if mode is Mode.ZERO_SHOT:
            if not speaker.has_prompt:
                raise ValueError("zero_shot needs a speaker with prompt text and prompt speech")
            # inference_zero_shot's prompt ids were made when the speaker was built
            return [replace(r, mode=mode, prompt_ids=speaker.prompt_ids)
                    for r in sft(self.frontend, text, text_frontend=text_frontend)]
        if mode is Mode.CROSS_LINGUAL:
            return cross_lingual(self.frontend, text, text_frontend=text_frontend)
        if mode is Mode.INSTRUCT2:
            if not instruct:
                raise ValueError("instruct2 needs an instruct text")
            return instruct2(self.frontend, text, instruct, text_frontend=text_frontend)
        return sft(self.frontend, text, text_frontend=text_frontend)

    # ------------------------------------------------------------------ one segment

    def speech_tokens(self, text: LlmText, speaker: Speaker, generator: torch.Generator) -> Iterator[int]:
        """The LLM's speech tokens for one segment, one by one as they are sampled.

        A SamplingFailed (stop ids kept winning before min_len) ends the segment with the
        tokens so far, as upstream's non-stream tts() vocodes what the LLM thread produced.
        """
        zero_shot = text.mode is Mode.ZERO_SHOT  # the only mode whose LLM sees prompt speech
        prompt_speech = speaker.features.speech_token.reshape(-1).tolist() if zero_shot else []
        lm_input = self.lm.build_lm_input(text.text_ids, prompt_text_ids=text.prompt_ids,
                                          prompt_speech_ids=prompt_speech)
        limits = LengthLimits.for_text(len(text.text_ids), self.lm.cfg)
        if self.scheduler is not None:
            yield from self._scheduled_tokens(text, lm_input, limits, generator)
            return
        decoder = TokenDecoder(self.lm, lm_input, limits, sampler=self.sampler, generator=generator)
        while not decoder.finished:
            try:
                step = decoder.step()
            except SamplingFailed as exc:
                logger.warning("segment %r: %s; keeping %d tokens", text.segment, exc, len(decoder.tokens))
                return
            if step.token is not None:
                yield step.token

    def _scheduled_tokens(self, text: LlmText, lm_input: Tensor, limits: LengthLimits,
                          generator: torch.Generator) -> Iterator[int]:
        """speech_tokens through the shared scheduler; leaving early cancels the request there."""
        assert self.scheduler is not None
        stream = self.scheduler.submit(lm_input, limits, sampler=self.sampler, generator=generator)
        try:
            yield from stream
        except SamplingFailed as exc:
            logger.warning("segment %r: %s; keeping %d tokens", text.segment, exc, len(stream.tokens))
        finally:
            if not stream.done.is_set():
                stream.cancel()

    @staticmethod
    def flow_prompt(mode: Mode, speaker: Speaker) -> PromptFeatures:
        """sft has no flow prompt, only the embedding; every other mode uses the whole prompt."""
        if mode is Mode.SFT:
            return embedding_speaker(speaker.features.embedding).features
        return speaker.features

    # ------------------------------------------------------------------ requests

    def synthesize_segments(self, text: str, mode: Mode | str, speaker: Speaker, *,
                            instruct: str | None = None, seed: int | None = None,
                            text_frontend: bool = True) -> list[SegmentResult]:
        """Non-stream: per segment all tokens, then one full-attention token2wav call."""
        generator = request_generator(seed)
        out = []
        for run in self.segments(text, mode, speaker, instruct=instruct, text_frontend=text_frontend):
            tokens = list(self.speech_tokens(run, speaker, generator))
            audio = offline_prompted(self.token2wav, self.flow_prompt(run.mode, speaker), tokens)
            out.append(SegmentResult(run, tokens, audio))
        return out

    def synthesize(self, text: str, mode: Mode | str, speaker: Speaker, *, instruct: str | None = None,
                   seed: int | None = None, text_frontend: bool = True) -> np.ndarray:
        """Whole reply -> float32 [n] PCM at 24 kHz."""
        parts = [r.audio for r in self.synthesize_segments(text, mode, speaker, instruct=instruct, seed=seed,
                                                            text_frontend=text_frontend)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def stream(self, text: str, mode: Mode | str, speaker: Speaker, *, instruct: str | None = None,
               seed: int | None = None, schedule: Schedule | str = Schedule.CACHED,
               text_frontend: bool = True) -> Iterator[np.ndarray]:
        """Stream PCM chunks (float32, 24 kHz): each token goes to token2wav as it is sampled."""
        generator = request_generator(seed)
        for run in self.segments(text, mode, speaker, instruct=instruct, text_frontend=text_frontend):
            yield from self._stream_segment(run, speaker, generator, schedule)

    def stream_text(self, pieces: Iterable[str], mode: Mode | str, speaker: Speaker, *,
                    instruct: str | None = None, seed: int | None = None,
                    schedule: Schedule | str = Schedule.CACHED) -> Iterator[np.ndarray]:
        """Text arriving in pieces (e.g. an LLM's streamed reply): each complete sentence is
        synthesised as soon as it is complete, without waiting for the rest of the text."""
        generator = request_generator(seed)
        for sentence in sentences(pieces):
            for run in self.segments(sentence, mode, speaker, instruct=instruct):
                yield from self._stream_segment(run, speaker, generator, schedule)

    def _stream_segment(self, run: LlmText, speaker: Speaker, generator: torch.Generator,
                        schedule: Schedule | str) -> Iterator[np.ndarray]:
        stream = new_prompted_stream(self.token2wav, self.flow_prompt(run.mode, speaker), schedule)
        for token in self.speech_tokens(run, speaker, generator):
            pcm = stream.push([token])
            if pcm.size:
                yield pcm
        pcm = stream.finalize()
        if pcm.size:
            yield pcm


# ---------------------------------------------------------------------------------------------
# sentences from streamed text

# A sentence ends at CJK/full-width end punctuation or a newline anywhere, and at ASCII
# . ! ? ; only when whitespace follows (so "3.5" and "e.g" inside a word do not cut).
_SENTENCE_END = re.compile(r"[。！？；…\n]+[”’\"')）]*|[.!?;]+[\"')]*(?=\s)")


def sentences(pieces: Iterable[str]) -> Iterator[str]:
    """Complete sentences from text pieces, yielded as soon as their end is seen; the rest
    when the pieces end. Each sentence still goes through the front end's own splitting."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        cut = 0
        for match in _SENTENCE_END.finditer(buffer):
            cut = match.end()
        if cut:
            head, buffer = buffer[:cut], buffer[cut:]
            if head.strip():
                yield head.strip()
    if buffer.strip():
        yield buffer.strip()
