"""Building blocks of the causal HiFT vocoder, all evaluable over a stream.

Every convolution is a `StreamConv1d`: it keeps, in a per-session `ConvBuffers` dict, the
input it still needs for its next output frame. A fresh dict reproduces upstream's zero
padding, so one code path serves the whole-utterance call and chunk-by-chunk streaming.
Parameter names follow upstream's `hift.pt` keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# pending input of each conv of one session, keyed by the conv module
ConvBuffers = dict[nn.Module, torch.Tensor]


class StreamConv1d(nn.Conv1d):
    """Conv1d with `left_pad` zeros at stream start and `right_pad` zeros at its end."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 left_pad: int = 0, right_pad: int = 0) -> None:
        super().__init__(cin, cout, kernel, stride=stride, dilation=dilation)
        self.left_pad = left_pad
        self.right_pad = right_pad
        self.span = (kernel - 1) * dilation + 1

    def stream(self, x: torch.Tensor, buffers: ConvBuffers, finalize: bool = False) -> torch.Tensor:
        """x [B, C, n] new input -> every output frame it completes [B, C_out, m]."""
        prev = buffers.get(self)
        if prev is None:
            prev = x.new_zeros(x.shape[0], x.shape[1], self.left_pad)
        buf = torch.cat([prev, x], dim=2)
        if finalize and self.right_pad:
            buf = F.pad(buf, (0, self.right_pad))
        n_out = max((buf.shape[2] - self.span) // self.stride[0] + 1, 0)
        buffers[self] = buf[:, :, n_out * self.stride[0]:]
        if n_out == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        return self(buf[:, :, : (n_out - 1) * self.stride[0] + self.span])


def left_conv(cin: int, cout: int, kernel: int, dilation: int = 1) -> StreamConv1d:
    """Causal conv: output t sees inputs t-(k-1)d .. t."""
    return weight_norm(StreamConv1d(cin, cout, kernel, dilation=dilation, left_pad=(kernel - 1) * dilation))


def right_conv(cin: int, cout: int, kernel: int) -> StreamConv1d:
    """Lookahead conv: output t sees inputs t .. t+k-1 (zeros past the end when final)."""
    return weight_norm(StreamConv1d(cin, cout, kernel, right_pad=kernel - 1))


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha with one learnt alpha per channel (not log-scaled)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.view(1, -1, 1)  # [C] -> [1, C, 1]
        # one temporary, updated in place: on [B, 4, 6000] stacks the allocations of the
        # plain expression cost as much as its arithmetic
        s = x * alpha
        s.sin_()
        s.mul_(s)
        return torch.addcmul(x, s, 1.0 / (alpha + 1e-9))


class ResBlock(nn.Module):
    """Three residual (Snake, dilated causal conv, Snake, causal conv) units."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList([left_conv(channels, channels, kernel, d) for d in dilations])
        self.convs2 = nn.ModuleList([left_conv(channels, channels, kernel) for _ in dilations])
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor, buffers: ConvBuffers) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            # nn.ModuleList items are typed nn.Module; convs1 and convs2 hold StreamConv1d
            y = cast(StreamConv1d, conv1).stream(act1(x), buffers)
            x = cast(StreamConv1d, conv2).stream(act2(y), buffers) + x
        return x


class F0Predictor(nn.Module):
    """Mel -> f0 in Hz at the mel frame rate; the first conv looks 3 frames ahead."""

    def __init__(self, in_channels: int, cond_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [right_conv(in_channels, cond_channels, 4), nn.ELU()]
        for _ in range(4):
            layers += [left_conv(cond_channels, cond_channels, 3), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: torch.Tensor, buffers: ConvBuffers, finalize: bool) -> torch.Tensor:
        """mel [1, 80, n] new frames -> f0 [1, m] for every frame now computable."""
        x = mel.float()  # f0 precision matters for voicing decisions: always fp32
        for layer in self.condnet:
            x = layer.stream(x, buffers, finalize) if isinstance(layer, StreamConv1d) else layer(x)
        return self.classifier(x.transpose(1, 2)).squeeze(-1).abs()  # [1, C, m] -> [1, m]


class SourceModule(nn.Module):
    """Neural-source-filter excitation from f0 (harmonic branch only, spec section 6.2)."""

    def __init__(self, n_harmonics: int, sampling_rate: int, samples_per_frame: int,
                 alpha: float, sigma: float, voiced_threshold: float) -> None:
        super().__init__()
        self.n_harmonics = n_harmonics
        self.sampling_rate = sampling_rate
        self.samples_per_frame = samples_per_frame
        self.alpha, self.sigma, self.voiced_threshold = alpha, sigma, voiced_threshold
        self.l_linear = nn.Linear(n_harmonics, 1)

    def forward(self, f0: torch.Tensor, phase: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 [1, n] Hz; phase [1, 9] fp64 running sum; noise [1, spf*n, 9] uniform.

        Returns (excitation before the merge, [1, spf*n, 9]; updated phase sum).
        The phase is a per-frame staircase: frame k uses the fp64 running sum of
        ((f0*h)/sr mod 1) up to frame k, rounded to fp32, then scaled by 2*pi*spf.
        """
        spf = self.samples_per_frame
        sines, voiced, running = self._frames(f0, phase)
        sines = sines.repeat_interleave(spf, dim=1)  # [1, spf*n, 9]
        uv = voiced.repeat_interleave(spf, dim=1).unsqueeze(-1)
        noise_amp = uv * self.sigma + (1 - uv) * self.alpha / 3
        excitation = sines * uv + noise_amp * noise
        return excitation, running[:, -1]

    def source(self, f0: torch.Tensor, phase: torch.Tensor,
               noise: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`merge(forward(...))` for f0 [B, n], phase [B, 9] and one noise slice
        [1, spf*n, 9] per row -> (source [B, spf*n], updated phase sum).

        Sines and voicing are constant over a frame, so only the noise term needs the
        merge weights per sample: the [B, spf*n, 9] excitation is never built (equal to
        the plain definition up to float rounding).
        """
        rows, frames = f0.shape
        weight = self.l_linear.weight  # [1, 9]
        noise_merged = torch.cat([F.linear(n.to(weight), weight) for n in noise])  # [B, spf*n, 1]
        sines, voiced, running = self._frames(f0, phase)
        noise_amp = voiced * self.sigma + (1 - voiced) * self.alpha / 3  # [B, n]
        voiced_sines = (sines * voiced.unsqueeze(-1)).to(weight)
        harmonic = F.linear(voiced_sines, weight, self.l_linear.bias)  # [B, n, 1]
        merged = harmonic + noise_amp.unsqueeze(-1).to(weight) * noise_merged.view(rows, frames, -1)
        return torch.tanh(merged).flatten(1), running[:, -1]  # [B, n, spf] -> [B, spf*n]

    def _frames(self, f0: torch.Tensor,
                phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per frame: scaled sines [B, n, 9], voicing [B, n] (0/1) and the fp64 phase sum."""
        harmonics = torch.arange(1, self.n_harmonics + 1, device=f0.device, dtype=torch.float32)
        rad = (f0.float().unsqueeze(-1) * harmonics / self.sampling_rate) % 1  # [B, n, 9]
        # Sequential fp64 accumulation continuing from the previous chunk, like upstream's
        # CPU cumsum over the whole utterance.
        running = torch.cat([phase.unsqueeze(1), rad.double()], dim=1).cumsum(dim=1)[:, 1:]  # [B, n, 9]
        angle = running.float() * 2 * math.pi * self.samples_per_frame
        voiced = (f0.float() > self.voiced_threshold).float()
        return torch.sin(angle) * self.alpha, voiced, running

    def merge(self, excitation: torch.Tensor) -> torch.Tensor:
        """[1, L, 9] -> source signal [1, L]."""
        return torch.tanh(self.l_linear(excitation)).squeeze(-1)
