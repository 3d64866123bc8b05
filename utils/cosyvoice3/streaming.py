"""Token2Wav: a loaded flow + vocoder, and per-session streams that turn tokens into PCM.

One `Token2Wav` per device holds the weights and fixed noise, read-only. Each session
(a reply) gets its own `Token2WavStream` from `new_stream(mode)`; all of its state lives
in that object, so dropping the object frees it (cancel = drop, no global cache).

Modes:
- `cached` (default): static 25-token (50-frame) attention chunks with per-(ODE step,
  layer) key/value caches, and a vocoder that carries its causal state between chunks.
  Each chunk costs about the same; the audio equals the offline chunk-masked flow
  followed by the offline vocoder.
- `upstream-fac`: the Fun-Audio-Chat server's calls (hop 15 + 3 lookahead, full
  attention over the whole prefix, 200-token window, vocoder cache reset after 600
  dropped tokens). Cost per call grows with the prefix.
- `upstream-native`: CosyVoice's own `tts(stream=True)` driver (hop 25 + 3 with chunk
  attention, a final full-attention call).
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .dit import DiTCache
from .flow import CausalFlow
from .hift import HiftGenerator, HiftState
from .loading import load_models, load_spk2info

logger = logging.getLogger(__name__)

DEFAULT_SPEAKER = "中文女"  # the speaker Fun-Audio-Chat uses from its spk2info


class StreamMode(enum.StrEnum):
    CACHED = "cached"
    UPSTREAM_FAC = "upstream-fac"
    UPSTREAM_NATIVE = "upstream-native"


class Token2Wav:
    """CosyVoice3 token->24 kHz waveform model on one device, shared by all streams."""

    def __init__(self, flow: CausalFlow, hift: HiftGenerator, *,
                 speakers: dict[str, torch.Tensor] | None = None) -> None:
        self.flow = flow
        self.hift = hift
        self.speakers = dict(speakers or {})

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, sine_samples: int | None = None,
                       left_chunks: int | None = None) -> Token2Wav:
        """Load a release or test layout directory (see loading.py).

        `sine_samples` caps the vocoder's fixed noise (default: upstream's 300 s); a
        shorter cap is an exact prefix and only limits the longest reply.
        `left_chunks` overrides the config's `num_decoding_left_chunks` (-1: attend to all
        earlier 2 s chunks, as released). A limit bounds the cached mode's key/value memory
        per session, at the price of output that differs from the released behaviour.
        """
        flow, hift, files = load_models(model_dir, device=device, dtype=dtype, sine_samples=sine_samples)
        if left_chunks is not None:
            flow.set_left_chunks(left_chunks)
        speakers = load_spk2info(files.spk2info) if files.spk2info else {}
        return cls(flow, hift, speakers=speakers)

    @property
    def device(self) -> torch.device:
        return self.flow.input_embedding.weight.device

    @property
    def sample_rate(self) -> int:
        return self.hift.cfg.sampling_rate

    def speaker_embedding(self, embedding: np.ndarray | torch.Tensor | None = None,
                          speaker: str | None = None) -> torch.Tensor:
        """Resolve an explicit embedding, a spk2info id, or the default speaker -> [1, 192]."""
        if isinstance(embedding, torch.Tensor):
            emb = embedding.detach().float().reshape(1, -1)
        elif embedding is not None:
            emb = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(1, -1)
        elif speaker is not None:
            if speaker not in self.speakers:
                raise KeyError(f"unknown speaker {speaker!r}; spk2info has {sorted(self.speakers)}")
            emb = self.speakers[speaker]
        elif DEFAULT_SPEAKER in self.speakers:
            emb = self.speakers[DEFAULT_SPEAKER]
        elif len(self.speakers) == 1:
            emb = next(iter(self.speakers.values()))
        else:
            raise ValueError("no speaker embedding given and no default speaker in spk2info")
        if emb.shape[1] != self.flow.cfg.spk_embed_dim:
            raise ValueError(f"speaker embedding must have {self.flow.cfg.spk_embed_dim} values, "
                             f"got {emb.shape[1]}")
        return emb.to(self.device)

    def new_stream(self, mode: StreamMode | str = StreamMode.CACHED, *,
                   embedding: np.ndarray | torch.Tensor | None = None,
                   speaker: str | None = None) -> Token2WavStream:
        emb = self.speaker_embedding(embedding, speaker)
        classes: dict[StreamMode, type[Token2WavStream]] = {
            StreamMode.CACHED: CachedStream, StreamMode.UPSTREAM_FAC: FunAudioChatStream,
            StreamMode.UPSTREAM_NATIVE: NativeStream}
        stream_cls = classes[StreamMode(mode)]
        return stream_cls(self, emb)

    @torch.inference_mode()
    def offline(self, tokens: Sequence[int], *, embedding: np.ndarray | torch.Tensor | None = None,
                speaker: str | None = None) -> np.ndarray:
        """Whole utterance in one call (full attention, finalize) -> float32 [480 N]."""
        call = UpstreamCall(self, self.speaker_embedding(embedding, speaker))
        return call(list(tokens), 0, stream=False, finalize=True)


class UpstreamCall:
    """Upstream `CosyVoice3Model.token2wav` for one uuid: stateless flow, growing HiFT cache.

    Each call re-runs the flow on the whole token list and the vocoder on the whole cached
    mel, then emits only the samples not emitted before.
    """

    def __init__(self, model: Token2Wav, embedding: torch.Tensor) -> None:
        self.model = model
        self.embedding = embedding
        self.cache_mel: torch.Tensor | None = None  # [1, 80, frames] fp32
        self.speech_offset = 0

    def reset(self) -> None:
        self.cache_mel, self.speech_offset = None, 0

    def __call__(self, tokens: list[int], token_offset: int, *, stream: bool, finalize: bool) -> np.ndarray:
        flow, device = self.model.flow, self.model.device
        token = torch.tensor([tokens], dtype=torch.int32, device=device)
        empty_tok = torch.zeros(1, 0, dtype=torch.int32, device=device)
        empty_feat = torch.zeros(1, 0, flow.cfg.output_size, device=device)
        mel = flow.inference(token, empty_tok, empty_feat, self.embedding,
                             streaming=stream, finalize=finalize)
        mel = mel[:, :, token_offset * flow.cfg.token_mel_ratio:]
        self.cache_mel = mel if self.cache_mel is None else torch.cat([self.cache_mel, mel], dim=2)
        audio = self.model.hift.upstream_inference(self.cache_mel, finalize=finalize)[self.speech_offset:]
        self.speech_offset += audio.shape[0]
        return audio.cpu().numpy()


class Token2WavStream(ABC):
    """One reply's token->PCM state. push() as tokens arrive, finalize() at the end.

    Both return float32 [n] PCM at 24 kHz, possibly empty. Drop the object to cancel.
    """

    mode: StreamMode

    def __init__(self, model: Token2Wav, embedding: torch.Tensor) -> None:
        self.model = model
        self.embedding = embedding
        self.tokens_received = 0
        self.samples_emitted = 0
        self.finalized = False

    def push(self, tokens: Sequence[int]) -> np.ndarray:
        if self.finalized:
            raise RuntimeError("push() after finalize()")
        new = [int(t) for t in tokens]
        self.tokens_received += len(new)
        with torch.inference_mode():
            return self._count(self._push(new))

    def finalize(self) -> np.ndarray:
        if self.finalized:
            raise RuntimeError("finalize() called twice")
        self.finalized = True
        with torch.inference_mode():
            pcm = self._count(self._finalize())
        logger.debug("%s stream finalized: %d tokens -> %d samples", self.mode.value,
                     self.tokens_received, self.samples_emitted)
        return pcm

    def _count(self, chunks: list[np.ndarray]) -> np.ndarray:
        pcm = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        self.samples_emitted += pcm.shape[0]
        return pcm

    @abstractmethod
    def _push(self, tokens: list[int]) -> list[np.ndarray]: ...

    @abstractmethod
    def _finalize(self) -> list[np.ndarray]: ...


class FunAudioChatStream(Token2WavStream):
    """Fun-Audio-Chat server chunking, for tokens arriving one at a time from its LLM.

    A call is made as soon as offset + hop + lookahead tokens exist, always with full
    attention (stream=False). After each call the offset advances by the hop; once it
    reaches the window, the first `window` tokens are dropped (the flow restarts on the
    rest, from noise position 0) and, after `history` dropped tokens, the vocoder cache is
    reset. The server applies that reset through a control queue; we apply it before
    the next call. At the end, a final call is made only if more than offset + 4 tokens
    remain; otherwise the tail is never vocoded, as in the server.
    """

    mode = StreamMode.UPSTREAM_FAC
    hop, lookahead, window, history = 15, 3, 200, 500

    def __init__(self, model: Token2Wav, embedding: torch.Tensor) -> None:
        super().__init__(model, embedding)
        self.call = UpstreamCall(model, embedding)
        self.tokens: list[int] = []
        self.offset = 0
        self.dropped = 0
        self.calls: list[tuple[int, int, bool]] = []  # (tokens sent, offset, finalize)

    def _push(self, tokens: list[int]) -> list[np.ndarray]:
        out = []
        for token in tokens:  # the server checks after every appended token
            self.tokens.append(token)
            if len(self.tokens) >= self.offset + self.hop + self.lookahead:
                out.append(self._send(finalize=False))
                self._advance()
        return out

    def _finalize(self) -> list[np.ndarray]:
        if len(self.tokens) <= self.offset + 1 + self.lookahead:
            return []
        return [self._send(finalize=True)]

    def _send(self, *, finalize: bool) -> np.ndarray:
        self.calls.append((len(self.tokens), self.offset, finalize))
        return self.call(list(self.tokens), self.offset, stream=False, finalize=finalize)

    def _advance(self) -> None:
        self.offset += self.hop
        if self.offset >= self.window:
            self.offset -= self.window
            self.tokens = self.tokens[self.window:]
            self.dropped += self.window
            if self.dropped >= self.history:
                self.dropped = 0
                self.call.reset()


class NativeStream(Token2WavStream):
    """CosyVoice3 `tts(stream=True)` at 2db78e7 (no prompt): hop 25 + 3 lookahead, chunk
    attention for the hops, one full-attention finalize call with all tokens at the end."""

    mode = StreamMode.UPSTREAM_NATIVE

    def __init__(self, model: Token2Wav, embedding: torch.Tensor) -> None:
        super().__init__(model, embedding)
        self.call = UpstreamCall(model, embedding)
        self.tokens: list[int] = []
        self.offset = 0
        self.hop = model.flow.tokens_per_chunk
        self.lookahead = model.flow.cfg.pre_lookahead_len
        self.calls: list[tuple[int, int, bool]] = []

    def _push(self, tokens: list[int]) -> list[np.ndarray]:
        self.tokens.extend(tokens)
        out = []
        while len(self.tokens) - self.offset >= self.hop + self.lookahead:
            n = self.offset + self.hop + self.lookahead
            self.calls.append((n, self.offset, False))
            out.append(self.call(self.tokens[:n], self.offset, stream=True, finalize=False))
            self.offset += self.hop
        return out

    def _finalize(self) -> list[np.ndarray]:
        if not self.tokens:
            return []
        self.calls.append((len(self.tokens), self.offset, True))
        return [self.call(self.tokens, self.offset, stream=False, finalize=True)]


class CachedStream(Token2WavStream):
    """Chunk-causal flow with key/value caches + stateful vocoder: constant cost per chunk."""

    mode = StreamMode.CACHED

    def __init__(self, model: Token2Wav, embedding: torch.Tensor) -> None:
        super().__init__(model, embedding)
        flow = model.flow
        self.spks = flow.speaker(embedding)  # [1, 80]
        self.caches = [DiTCache.empty(flow.cfg.dit.depth) for _ in range(flow.cfg.n_timesteps)]
        self.vocoder = HiftState()
        self.tokens = torch.zeros(1, 0, dtype=torch.long, device=model.device)
        self.done = 0  # tokens whose mel has been produced
        self.chunk = flow.tokens_per_chunk

    def _push(self, tokens: list[int]) -> list[np.ndarray]:
        new = torch.tensor([tokens], dtype=torch.long, device=self.tokens.device)
        self.tokens = torch.cat([self.tokens, new], dim=1)
        lookahead = self.model.flow.cfg.pre_lookahead_len
        out = []
        while self.tokens.shape[1] >= self.done + self.chunk + lookahead:
            out.append(self._vocode(self._next_mel(self.done + self.chunk), finalize=False))
        return out

    def _finalize(self) -> list[np.ndarray]:
        total = self.tokens.shape[1]
        mels = []
        while self.done < total:
            mels.append(self._next_mel(min(self.done + self.chunk, total)))
        if not mels and self.vocoder.blocks_done == 0 and self.vocoder.mel_pending is None:
            return []  # nothing was ever pushed
        mel = torch.cat(mels, dim=2) if mels else self.spks.new_zeros(1, self.model.flow.cfg.output_size, 0)
        return [self._vocode(mel, finalize=True)]

    def _next_mel(self, end: int) -> torch.Tensor:
        mel = self.model.flow.chunk(self.tokens, self.done, end, self.spks, self.caches)
        self.done = end
        return mel

    def _vocode(self, mel: torch.Tensor, *, finalize: bool) -> np.ndarray:
        return self.model.hift.step(mel, self.vocoder, finalize=finalize).cpu().numpy()
