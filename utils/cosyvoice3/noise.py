"""The fixed noise buffers of CosyVoice3 inference, rebuilt without upstream code.

Upstream draws them from the global CPU RNG while it constructs the models: the CFM
constructor reseeds to 0, draws the ODE start noise, and every module built after it
(the flow's embedding and speaker projection, the f0 predictor, then the HiFT source)
consumes draws through its default initialiser before the sine noise is drawn. We replay
exactly those draws on a private generator (spec section 6.5), so the process-wide RNG is
never touched and the buffers do not depend on what else the process has done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import FlowConfig, HiftConfig


@dataclass(frozen=True)
class NoiseBuffers:
    """Position-indexed noise shared read-only by every session of one model."""

    flow_noise: torch.Tensor  # float32 [1, 80, 15000], ODE start x at mel frame k
    sine_noise: torch.Tensor  # float32 [1, S, 9], uniform [0, 1) at audio sample k
    rand_ini: torch.Tensor  # float32 [1, 9]; has no effect on output, kept for checks


def _consume_linear(gen: torch.Generator, out_features: int, in_features: int) -> None:
    """Draw what nn.Linear / nn.Conv1d default init draws for this fan-in."""
    weight = torch.empty(out_features, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    bound = 1.0 / math.sqrt(in_features)
    torch.empty(out_features).uniform_(-bound, bound, generator=gen)


def _consume_conv(gen: torch.Generator, cout: int, cin: int, kernel: int) -> None:
    weight = torch.empty(cout, cin, kernel)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    bound = 1.0 / math.sqrt(cin * kernel)
    torch.empty(cout).uniform_(-bound, bound, generator=gen)


def build_noise(flow_cfg: FlowConfig, hift_cfg: HiftConfig, *,
                sine_samples: int | None = None) -> NoiseBuffers:
    """Replay upstream's construction-time draws.

    `sine_samples` shortens the sine buffer (the draws are sequential, so a shorter buffer
    is an exact prefix of the full one); by default it is upstream's 300 s.
    """
    n_harm = hift_cfg.nb_harmonics + 1
    n_sine = hift_cfg.max_noise_samples if sine_samples is None else sine_samples
    gen = torch.Generator(device="cpu").manual_seed(0)
    flow_noise = torch.randn(1, flow_cfg.output_size, flow_cfg.max_noise_frames, generator=gen)
    # flow constructor body: input_embedding (normal init), then spk_embed_affine_layer
    torch.empty(flow_cfg.vocab_size, flow_cfg.input_size).normal_(generator=gen)
    _consume_linear(gen, flow_cfg.output_size, flow_cfg.spk_embed_dim)
    # hift children first: the f0 predictor (one right conv, four left convs, classifier)
    cond = hift_cfg.f0_cond_channels
    _consume_conv(gen, cond, hift_cfg.in_channels, 4)
    for _ in range(4):
        _consume_conv(gen, cond, cond, 3)
    _consume_linear(gen, 1, cond)
    # hift constructor: the source module's sine generator comes first
    rand_ini = torch.rand(1, n_harm, generator=gen)
    rand_ini[:, 0] = 0
    sine_noise = torch.rand(1, n_sine, n_harm, generator=gen)
    return NoiseBuffers(flow_noise=flow_noise, sine_noise=sine_noise, rand_ini=rand_ini)
