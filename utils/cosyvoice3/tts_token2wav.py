"""Token2wav with a voice prompt, for the TTS (tts spec §8, §9.1; T2W §3, §7).

The flow runs on [prompt tokens | speech tokens] with the prompt mel as the condition of the
prompt's frames, and the prompt's frames are dropped from its output. The prompt is a
`PromptFeatures` (tokens [1, L], mel [1, 2L, 80], embedding [1, 192]); L = 0 is an
embedding-only (sft) prompt.

- `PromptedCachedStream` ("cached", the default for serving): static 25-token attention
  chunks on the prompt+speech grid with per-ODE-step key/value caches and a stateful
  vocoder, so each chunk costs the same and first audio comes once the chunk holding the
  prompt's end has its 3 lookahead tokens. Its non-final mel equals upstream's chunk-masked
  calls; its end differs from upstream, whose last call switches to full attention.
- `UpstreamScheduleStream` ("upstream"): upstream's `tts(stream=True)` driver at 2db78e7,
  for comparison: hop 25 (the first hop padded so prompt + hop ends on the chunk grid) + 3
  lookahead, each call re-running the chunk-masked flow on the whole prefix, then one
  full-attention call with every token.
- `offline_prompted`: the non-stream call (all tokens, full attention, finalize).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch

from .dit import DiTCache
from .hift import HiftState
from .prompt_features import PromptFeatures
from .streaming import StreamMode, Token2Wav, Token2WavStream


class Schedule(enum.StrEnum):
    CACHED = "cached"
    UPSTREAM = "upstream"


@dataclass(frozen=True)
class CallRecord:
    """One upstream token2wav call: its arguments, the flow mel before the offset cut
    ([1, 80, 2·(tokens after the prompt)]) and the audio it emitted."""

    n_tokens: int
    token_offset: int
    stream: bool
    finalize: bool
    mel: torch.Tensor
    audio: np.ndarray


class PromptedUpstreamCall:
    """Upstream `CosyVoice3Model.token2wav` for one segment: stateless flow over the whole
    prefix (with the prompt), growing mel cache, vocoder re-run on the whole cache."""

    def __init__(self, model: Token2Wav, prompt: PromptFeatures, *, record: bool = False) -> None:
        self.model = model
        device = model.device
        self.embedding = model.speaker_embedding(prompt.embedding)
        self.prompt_token = prompt.speech_token.to(device=device, dtype=torch.int32)
        self.prompt_feat = prompt.speech_feat.to(device=device, dtype=torch.float32)
        self.cache_mel: torch.Tensor | None = None
        self.speech_offset = 0
        self.calls: list[CallRecord] | None = [] if record else None

    @torch.inference_mode()
    def __call__(self, tokens: list[int], token_offset: int, *, stream: bool, finalize: bool) -> np.ndarray:
        flow = self.model.flow
        token = torch.tensor([tokens], dtype=torch.int32, device=self.model.device)
        mel = flow.inference(token, self.prompt_token, self.prompt_feat, self.embedding,
                             streaming=stream, finalize=finalize)
        new = mel[:, :, token_offset * flow.cfg.token_mel_ratio:]
        self.cache_mel = new if self.cache_mel is None else torch.cat([self.cache_mel, new], dim=2)
        audio = self.model.hift.upstream_inference(self.cache_mel, finalize=finalize)[self.speech_offset:]
        self.speech_offset += audio.shape[0]
        pcm = audio.cpu().numpy()
        if self.calls is not None:
            self.calls.append(CallRecord(len(tokens), token_offset, stream, finalize, mel.cpu(), pcm))
        return pcm


def offline_prompted(model: Token2Wav, prompt: PromptFeatures, tokens: list[int]) -> np.ndarray:
    """Non-stream tts(): one call with all tokens, offset 0, full attention -> float32 [480 N]."""
    if not tokens:
        return np.zeros(0, np.float32)
    return PromptedUpstreamCall(model, prompt)(list(tokens), 0, stream=False, finalize=True)


class UpstreamScheduleStream(Token2WavStream):
    """§9.1's driver with tokens pushed as the LLM produces them.

    A hop call is made as soon as offset + h + 3 tokens exist (h = 25 + pad for the first
    hop, 25 after), which is what upstream does whenever its 0.1 s poll finds the LLM still
    running. Not emulated: upstream's one timing edge, where the LLM has already finished
    when the first hop is cut and the break test still uses 25 + pad.
    """

    mode = StreamMode.UPSTREAM_NATIVE

    def __init__(self, model: Token2Wav, prompt: PromptFeatures, *, record: bool = False) -> None:
        self.call = PromptedUpstreamCall(model, prompt, record=record)
        super().__init__(model, self.call.embedding)
        self.tokens: list[int] = []
        self.offset = 0
        self.hop = model.flow.tokens_per_chunk
        self.lookahead = model.flow.cfg.pre_lookahead_len
        n_prompt = prompt.speech_token.shape[1]
        # prompt + first hop ends on the flow's 50-frame attention-chunk grid
        self.pad = math.ceil(n_prompt / self.hop) * self.hop - n_prompt

    def _next_hop(self) -> int:
        return self.hop + self.pad if self.offset == 0 else self.hop

    def _push(self, tokens: list[int]) -> list[np.ndarray]:
        self.tokens.extend(tokens)
        out = []
        while len(self.tokens) - self.offset >= self._next_hop() + self.lookahead:
            hop = self._next_hop()
            n = self.offset + hop + self.lookahead
            out.append(self.call(self.tokens[:n], self.offset, stream=True, finalize=False))
            self.offset += hop
        return out

    def _finalize(self) -> list[np.ndarray]:
        if not self.tokens:
            return []
        return [self.call(self.tokens, self.offset, stream=False, finalize=True)]


class PromptedCachedStream(Token2WavStream):
    """Chunk-causal flow with key/value caches over prompt + speech, stateful vocoder.

    Chunks that lie wholly in the prompt (lookahead included) are run at construction:
    their mel is discarded but their keys/values are what later chunks attend to.
    """

    mode = StreamMode.CACHED

    def __init__(self, model: Token2Wav, prompt: PromptFeatures, *, record: bool = False) -> None:
        super().__init__(model, model.speaker_embedding(prompt.embedding))
        flow, device = model.flow, model.device
        self.spks = flow.speaker(self.embedding)  # [1, 80]
        self.caches = [DiTCache.empty(flow.cfg.dit.depth) for _ in range(flow.cfg.n_timesteps)]
        self.vocoder = HiftState()
        self.tokens = prompt.speech_token.to(device=device, dtype=torch.long)  # prompt, then speech
        self.prompt_frames = prompt.speech_feat.shape[1]
        self.prompt_cond = prompt.speech_feat.to(device=device, dtype=torch.float32).transpose(1, 2)
        self.done = 0  # tokens (prompt included) whose mel exists
        self.chunk = flow.tokens_per_chunk
        self.mel_chunks: list[torch.Tensor] | None = [] if record else None
        with torch.inference_mode():
            self._advance(final=False)

    def _push(self, tokens: list[int]) -> list[np.ndarray]:
        new = torch.tensor([tokens], dtype=torch.long, device=self.tokens.device)
        self.tokens = torch.cat([self.tokens, new], dim=1)
        mel = self._advance(final=False)
        if mel.shape[2] == 0:
            return []
        return [self._vocode(mel, finalize=False)]

    def _finalize(self) -> list[np.ndarray]:
        if self.tokens_received == 0:
            return []  # nothing was ever pushed: no audio, as upstream with no tokens
        return [self._vocode(self._advance(final=True), finalize=True)]

    def _advance(self, *, final: bool) -> torch.Tensor:
        """Run every chunk that is ready (all remaining ones if final) -> new speech mel."""
        total = self.tokens.shape[1]
        lookahead = 0 if final else self.model.flow.cfg.pre_lookahead_len
        mels = [self.spks.new_zeros(1, self.model.flow.cfg.output_size, 0)]
        while self.done < total:
            end = self.done + self.chunk
            if not final and total < end + lookahead:
                break  # a non-final chunk needs to be whole and to have its real lookahead
            mels.append(self._next_mel(min(end, total)))
        mel = torch.cat(mels, dim=2)
        if self.mel_chunks is not None and mel.shape[2]:
            self.mel_chunks.append(mel.cpu())
        return mel

    def _next_mel(self, end: int) -> torch.Tensor:
        ratio = self.model.flow.cfg.token_mel_ratio
        lo, hi = ratio * self.done, ratio * end
        cond = self.spks.new_zeros(1, self.model.flow.cfg.output_size, hi - lo)
        if lo < self.prompt_frames:  # the chunk holds prompt frames: they are the condition
            n = min(hi, self.prompt_frames) - lo
            cond[:, :, :n] = self.prompt_cond[:, :, lo:lo + n]
        mel = self.model.flow.chunk(self.tokens, self.done, end, self.spks, self.caches, cond)
        self.done = end
        return mel[:, :, max(self.prompt_frames - lo, 0):]  # the prompt's frames are not output

    def _vocode(self, mel: torch.Tensor, *, finalize: bool) -> np.ndarray:
        return self.model.hift.step(mel, self.vocoder, finalize=finalize).cpu().numpy()


def new_prompted_stream(model: Token2Wav, prompt: PromptFeatures, schedule: Schedule | str = Schedule.CACHED,
                        *, record: bool = False) -> PromptedCachedStream | UpstreamScheduleStream:
    """One segment's token->PCM stream; `record` keeps mels (and upstream call records) for tests."""
    if Schedule(schedule) is Schedule.CACHED:
        return PromptedCachedStream(model, prompt, record=record)
    return UpstreamScheduleStream(model, prompt, record=record)
