"""Flow half of CosyVoice3: speech tokens -> 80-bin mel at 50 Hz (spec sections 3-4).

`CausalFlow` mirrors upstream's `CausalMaskedDiffWithDiT` key layout:
`input_embedding`, `spk_embed_affine_layer`, `pre_lookahead_layer`, `decoder.estimator`.
The ODE start noise is a non-persistent buffer on `decoder` (not in the checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlowConfig
from .dit import DiT, DiTCache

Taps = dict[str, torch.Tensor]
# (x_in, mu_in, t_in, spks_in, cond_in, step index) -> velocity, batch of two rows
VelocityFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class PreLookaheadLayer(nn.Module):
    """Residual pair of convs over tokens: conv1 looks 3 tokens ahead, conv2 2 behind."""

    def __init__(self, in_channels: int, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(in_channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, in_channels, kernel_size=3)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, C] -> [B, N, C]; `context` [B, <=lookahead, C] are the real next tokens.

        Missing lookahead (no context, or a short one at the end of speech) is zeros.
        """
        h = x.transpose(1, 2)  # [B, N, C] -> [B, C, N]
        if context is not None:
            assert context.shape[1] <= self.lookahead, context.shape
            h = torch.cat([h, context.transpose(1, 2)], dim=2)
        h = F.pad(h, (0, self.lookahead + x.shape[1] - h.shape[2]))  # [B, C, N + lookahead]
        h = F.leaky_relu(self.conv1(h), 0.01)
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))
        return h.transpose(1, 2) + x  # [B, C, N] -> [B, N, C]


class ConditionalFlowSampler(nn.Module):
    """Euler solver of the CFG flow ODE with a cosine time grid (upstream's decoder)."""

    rand_noise: torch.Tensor  # buffer [1, 80, max_noise_frames], registered in __init__

    def __init__(self, cfg: FlowConfig, flow_noise: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.estimator = DiT(cfg.dit)
        assert flow_noise.shape == (1, cfg.output_size, cfg.max_noise_frames), flow_noise.shape
        self.register_buffer("rand_noise", flow_noise.clone(), persistent=False)

    def t_span(self) -> torch.Tensor:
        tau = torch.linspace(0, 1, self.cfg.n_timesteps + 1, dtype=torch.float32)
        return 1 - torch.cos(tau * 0.5 * torch.pi)

    def noise(self, start: int, frames: int) -> torch.Tensor:
        """ODE start for mel frames [start, start + frames): [1, 80, frames] fp32."""
        if start + frames > self.cfg.max_noise_frames:
            raise ValueError(f"flow input of {start + frames} mel frames exceeds the "
                             f"{self.cfg.max_noise_frames}-frame noise buffer (300 s)")
        return self.rand_noise[:, :, start:start + frames].float()

    def solve(self, z: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
              velocity: VelocityFn, taps: Taps | None = None,
              t_span: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate from noise z [B, 80, T] to a mel [B, 80, T] (fp32).

        `t_span` is `self.t_span()` already on z's device (a CUDA graph capture cannot copy
        it from the host); None computes it.

        Each step runs the estimator once on 2B rows, two per input row (interleaved):
        conditional, and unconditional with mu, speaker and cond zeroed;
        v = (1 + r) v_cond - r v_uncond. B > 1 is the batched vocoder (batched_stream.py).
        """
        assert z.shape == mu.shape == cond.shape, (z.shape, mu.shape, cond.shape)
        b = z.shape[0]
        assert spks.shape[0] == b and (taps is None or b == 1), (spks.shape, b)
        dtype = next(self.estimator.parameters()).dtype
        mu_in = _with_uncond(mu).to(dtype)  # [2B, 80, T]
        spks_in = _with_uncond(spks).to(dtype)  # [2B, 80]
        cond_in = _with_uncond(cond).to(dtype)
        rate = self.cfg.inference_cfg_rate
        t_span = self.t_span().to(z.device) if t_span is None else t_span
        x, t, dt = z.float(), t_span[0:1], t_span[1] - t_span[0]
        records: list[tuple[torch.Tensor, ...]] = []
        for step in range(1, len(t_span)):
            x_in = x.repeat_interleave(2, dim=0).to(dtype)  # [B, 80, T] -> [2B, 80, T]
            t_in = t.expand(2 * b).to(dtype)
            v = velocity(x_in, mu_in, t_in, spks_in, cond_in, step - 1).float()
            if taps is not None:
                records.append((x[0], t[0], v[0], v[1]))
            x = x + dt * ((1.0 + rate) * v[0::2] - rate * v[1::2])
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        if taps is not None:
            for name, parts in zip(("step_x_in", "step_t", "step_v_cond", "step_v_uncond"), zip(*records)):
                taps[name] = torch.stack(parts)
        return x


def _with_uncond(a: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [2B, ...]: each row followed by its zeroed (unconditional) copy."""
    return torch.stack([a, torch.zeros_like(a)], dim=1).flatten(0, 1)


class CausalFlow(nn.Module):
    """Tokens (+ optional prompt) and a speaker embedding -> mel (spec section 3)."""

    def __init__(self, cfg: FlowConfig, flow_noise: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.pre_lookahead_layer = PreLookaheadLayer(cfg.input_size, cfg.pre_lookahead_channels,
                                                     cfg.pre_lookahead_len)
        self.decoder = ConditionalFlowSampler(cfg, flow_noise)

    def set_left_chunks(self, left_chunks: int) -> None:
        """Change how many earlier attention chunks a chunk sees (-1: all)."""
        self.cfg = replace(self.cfg, dit=replace(self.cfg.dit, num_decoding_left_chunks=left_chunks))
        self.decoder.cfg = self.cfg
        self.decoder.estimator.cfg = self.cfg.dit

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens per static attention chunk (25 = 50 mel frames)."""
        return self.cfg.dit.static_chunk_size // self.cfg.token_mel_ratio

    def speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """[1, 192] raw speaker embedding -> [1, 80] projection (L2-normalised first)."""
        assert embedding.dim() == 2 and embedding.shape[1] == self.cfg.spk_embed_dim, embedding.shape
        weight = self.spk_embed_affine_layer.weight
        return self.spk_embed_affine_layer(F.normalize(embedding.to(weight), dim=1))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """[1, M] int ids -> [1, M, 80]."""
        assert tokens.dim() == 2, tokens.shape
        return self.input_embedding(tokens.clamp(min=0).long())

    def to_mu(self, h: torch.Tensor) -> torch.Tensor:
        """[1, M, 80] token features -> [1, 80, ratio*M] mel-rate condition."""
        return h.repeat_interleave(self.cfg.token_mel_ratio, dim=1).transpose(1, 2)

    def inference(self, tokens: torch.Tensor, prompt_tokens: torch.Tensor, prompt_feat: torch.Tensor,
                  embedding: torch.Tensor, *, streaming: bool, finalize: bool,
                  taps: Taps | None = None) -> torch.Tensor:
        """Upstream-equivalent whole-prefix call -> mel [1, 80, T - Tp] (fp32).

        finalize=False treats the last `pre_lookahead_len` tokens as right context only.
        `streaming` selects the static chunk attention mask. `taps` receives the Euler
        steps' inputs and velocities (step_x_in, step_t, step_v_cond, step_v_uncond).
        """
        n_prompt = prompt_tokens.shape[1]
        assert prompt_feat.shape[1] == self.cfg.token_mel_ratio * n_prompt, (
            prompt_tokens.shape, prompt_feat.shape)
        spks = self.speaker(embedding)
        emb = self.embed(torch.cat([prompt_tokens.to(tokens), tokens], dim=1))
        look = self.cfg.pre_lookahead_len
        if finalize:
            h = self.pre_lookahead_layer(emb)
        else:
            h = self.pre_lookahead_layer(emb[:, :-look], context=emb[:, -look:])
        mu = self.to_mu(h)  # [1, 80, T]
        frames, n_feat = mu.shape[2], prompt_feat.shape[1]
        cond = torch.zeros_like(mu)
        cond[:, :, :n_feat] = prompt_feat.transpose(1, 2).to(cond)
        estimator = self.decoder.estimator
        valid = torch.ones(2, 1, frames, device=mu.device)

        def velocity(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     c: torch.Tensor, _step: int) -> torch.Tensor:
            return estimator(x, valid, m, t, s, c, streaming=streaming)

        mel = self.decoder.solve(self.decoder.noise(0, frames), mu, spks, cond, velocity, taps)
        return mel[:, :, n_feat:]

    def chunk(self, tokens: torch.Tensor, start: int, end: int, spks: torch.Tensor,
              caches: list[DiTCache], cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mel [1, 80, ratio*(end-start)] for tokens [start, end) of a stream.

        `cond` [1, 80, ratio*(end-start)] is the chunk's slice of the prompt-mel condition
        (zeros past the prompt); None for a prompt-free stream.

        `tokens` [1, M] holds everything received; tokens [end, end+3) that exist are real
        lookahead, missing ones are the zeros of the final call. [start, end) must be one
        static attention chunk (or the tail of the last one), and `caches` (one per ODE
        step) must already hold every earlier chunk.
        """
        mu = self.chunk_condition(tokens, start, end)  # [1, 80, ratio*(end-start)]
        estimator = self.decoder.estimator

        def velocity(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     c: torch.Tensor, step: int) -> torch.Tensor:
            return estimator.forward_chunk(x, m, t, s, c, caches[step])

        z = self.decoder.noise(self.cfg.token_mel_ratio * start, mu.shape[2])
        cond = torch.zeros_like(mu) if cond is None else cond.to(mu)
        return self.decoder.solve(z, mu, spks, cond, velocity)

    def chunk_condition(self, tokens: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The mel-rate condition mu [1, 80, ratio*(end-start)] of chunk [start, end) (see chunk)."""
        look = self.cfg.pre_lookahead_len
        assert start % self.tokens_per_chunk == 0 and 0 < end - start <= self.tokens_per_chunk, (start, end)
        lo = max(start - 2, 0)  # conv2 of the pre-lookahead layer sees two tokens back
        emb = self.embed(tokens[:, lo:end + look])
        h = self.pre_lookahead_layer(emb[:, :end - lo], context=emb[:, end - lo:])[:, start - lo:]
        return self.to_mu(h)
