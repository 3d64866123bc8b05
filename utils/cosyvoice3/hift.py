"""Causal HiFT vocoder: 80-bin mel at 50 Hz -> 24 kHz audio (spec section 6).

`HiftGenerator.step` advances a per-session `HiftState` by some new mel frames and
returns every audio sample that no later input can change. Running one step over a
whole mel with `finalize=True` is upstream's offline call; `upstream_inference`
reproduces upstream's re-run-everything non-final call by truncating to its length.

Time bookkeeping per mel frame ("block"): 8, 40 and 120 frames at the three upsampling
stages, 120 source-STFT frames and 480 samples. Stage frames of block b need source-STFT
frames up to 120(b+1), i.e. the source of the next block, so the trunk runs one block
behind the f0/source front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .config import HiftConfig
from .hift_layers import ConvBuffers, F0Predictor, ResBlock, SourceModule, StreamConv1d, left_conv, right_conv

Taps = dict[str, torch.Tensor]


@dataclass
class HiftState:
    """Everything one session's vocoder carries between steps.

    Tensors have one row per session; batched_stream.py stacks the states of several
    sessions that are at the same point of their streams into one state with B rows.
    """

    buffers: ConvBuffers = field(default_factory=dict)
    phase: torch.Tensor | None = None  # fp64 [1, 9] running sum of the sine phase
    source_samples: int = 0  # source samples generated = index into the sine noise
    # per-row sine-noise offsets of a stacked state (None: the one row's source_samples)
    row_source_samples: list[int] | None = None
    stft_pending: torch.Tensor | None = None  # source samples not yet framed (reflect-padded start)
    spec_pending: torch.Tensor | None = None  # [1, 18, k] source-STFT frames not yet used
    spec_seen: int = 0  # source-STFT frames produced so far
    mel_pending: torch.Tensor | None = None  # [1, C, k] conv_pre outputs not yet used
    blocks_done: int = 0
    ola_tail: torch.Tensor | None = None  # [1, 2, n_fft - hop] partial overlap-add (signal, envelope)
    ola_positions: int = 0  # overlap-added positions released, counted before centring
    finished: bool = False


class HiftGenerator(nn.Module):
    """Upstream `CausalHiFTGenerator` with stream-carried state."""

    window: torch.Tensor  # buffer [n_fft], registered in __init__

    def __init__(self, cfg: HiftConfig, sine_noise: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        spf = cfg.samples_per_frame
        self.m_source = SourceModule(cfg.nb_harmonics + 1, cfg.sampling_rate, spf, cfg.nsf_alpha,
                                     cfg.nsf_sigma, cfg.nsf_voiced_threshold)
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels)
        self.conv_pre = right_conv(cfg.in_channels, cfg.base_channels, cfg.conv_pre_look_right + 1)
        n_bins = cfg.n_fft + 2
        self.ups = nn.ModuleList()
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        # cumulative downsampling of the source spectrum to each stage: 15, 3, 1
        down = [1]
        for rate in reversed(cfg.upsample_rates[1:]):
            down.insert(0, down[0] * rate)
        for i, (_rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            cin, ch = cfg.base_channels // 2**i, cfg.base_channels // 2 ** (i + 1)
            self.ups.append(left_conv(cin, ch, kernel))
            d = down[i]
            sd = StreamConv1d(n_bins, ch, 2 * d if d > 1 else 1, stride=d, left_pad=d - 1)
            self.source_downs.append(sd)
            self.source_resblocks.append(ResBlock(ch, cfg.source_resblock_kernel_sizes[i],
                                                  cfg.source_resblock_dilation_sizes[i]))
            for k, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(ch, k, dil))
        self.conv_post = left_conv(ch, n_bins, 7)
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
        # Read-only, CPU: 300 s of it is 260 MB, we copy only each step's slice.
        self.sine_noise = sine_noise

    def fold_weight_norm(self) -> None:
        """Bake g * v / |v| into plain weights once loading is done (saves recomputing)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    @property
    def trunk_dtype(self) -> torch.dtype:
        assert self.conv_pre.bias is not None  # every StreamConv1d here is built with a bias
        return self.conv_pre.bias.dtype

    # ------------------------------------------------------------------ public calls

    def step(self, mel: torch.Tensor, state: HiftState, *, finalize: bool,
             taps: Taps | None = None) -> torch.Tensor:
        """Advance by new mel frames [1, 80, n]; return new audio [L] fp32 in ±audio_limit."""
        assert mel.dim() == 3 and mel.shape[0] == 1, mel.shape
        return self.step_rows(mel, state, finalize=finalize, taps=taps)[0]

    def step_rows(self, mel: torch.Tensor, state: HiftState, *, finalize: bool,
                  taps: Taps | None = None) -> torch.Tensor:
        """`step` over B rows [B, 80, n] of one (stacked) state -> audio [B, L] fp32."""
        assert mel.dim() == 3 and mel.shape[1] == self.cfg.in_channels, mel.shape
        assert not state.finished, "this vocoder stream was already finalized"
        spf = self.cfg.samples_per_frame
        f0 = self._f0(mel, state.buffers, finalize)  # [B, m]
        source = self._source(f0, state)  # [1, spf*m]
        spec = self._stft(source, state, finalize)  # [1, 18, k]
        x = self.conv_pre.stream(mel.to(self.trunk_dtype), state.buffers, finalize)
        state.mel_pending = _cat(state.mel_pending, x)
        state.spec_pending = _cat(state.spec_pending, spec)
        first = state.blocks_done == 0
        frames_per_block = spf // self.cfg.hop_len
        ready = max((state.spec_seen - 1) // frames_per_block - state.blocks_done, 0)
        blocks = min(state.mel_pending.shape[2], ready)
        if finalize:
            assert blocks == state.mel_pending.shape[2], (blocks, state.mel_pending.shape)
        n_spec = blocks * frames_per_block + (1 if first and blocks else 0)
        x, state.mel_pending = state.mel_pending[:, :, :blocks], state.mel_pending[:, :, blocks:]
        spec, state.spec_pending = state.spec_pending[:, :, :n_spec], state.spec_pending[:, :, n_spec:]
        state.blocks_done += blocks
        y = self._trunk(x, spec.to(self.trunk_dtype), state.buffers, first) if blocks else None
        audio = self._istft(y, state, finalize, mel.shape[0])
        if taps is not None:
            taps.update(f0=f0, source=source.unsqueeze(1), source_stft=spec, conv_pre_out=x)
            if y is not None:
                taps["conv_post_out"] = y
        state.finished = finalize
        return audio.clamp(-self.cfg.audio_limit, self.cfg.audio_limit)

    def upstream_inference(self, mel: torch.Tensor, *, finalize: bool) -> torch.Tensor:
        """Upstream's stateless call on a whole mel [1, 80, T] -> audio [L] fp32.

        Non-final calls hold back 8 frames (3 f0 lookahead, 4 conv_pre lookahead, 1 for
        the iSTFT overlap): L = 480 (T - 8). The vocoder is causal, so this is a prefix
        of what a stateful step would emit.
        """
        audio = self.step(mel, HiftState(), finalize=finalize)
        if finalize:
            return audio
        keep = self.cfg.samples_per_frame * max(mel.shape[2] - 8, 0)
        return audio[:keep]

    # ------------------------------------------------------------------ pieces

    def _f0(self, mel: torch.Tensor, buffers: ConvBuffers, finalize: bool) -> torch.Tensor:
        """f0 [B, m], one row at a time: the sine phase sums f0 over the whole reply, so a
        rounding difference from a batched conv would grow with its length."""
        if mel.shape[0] == 1:
            return self.f0_predictor(mel, buffers, finalize)
        convs = [c for c in self.f0_predictor.condnet if isinstance(c, StreamConv1d)]
        rows: list[ConvBuffers] = [{c: buffers[c][i:i + 1] for c in convs if c in buffers}
                                   for i in range(mel.shape[0])]
        f0 = torch.cat([self.f0_predictor(mel[i:i + 1], row, finalize) for i, row in enumerate(rows)])
        for c in convs:
            buffers[c] = torch.cat([row[c] for row in rows])
        return f0

    def _source(self, f0: torch.Tensor, state: HiftState) -> torch.Tensor:
        rows, n = f0.shape[0], f0.shape[1] * self.cfg.samples_per_frame
        if n == 0:
            return f0.new_zeros(rows, 0)
        starts = state.row_source_samples or [state.source_samples]
        assert len(starts) == rows, (starts, f0.shape)
        if max(starts) + n > self.sine_noise.shape[1]:
            raise ValueError(f"vocoder input longer than the {self.sine_noise.shape[1]}-sample noise buffer")
        noise = [self.sine_noise[:, s:s + n].to(f0.device) for s in starts]  # B x [1, n, 9]
        if state.phase is None:
            state.phase = torch.zeros(rows, self.m_source.n_harmonics, dtype=torch.float64, device=f0.device)
        source, state.phase = self.m_source.source(f0, state.phase, noise)
        state.source_samples += n
        if state.row_source_samples is not None:
            state.row_source_samples = [s + n for s in starts]
        return source.float()

    def _stft(self, source: torch.Tensor, state: HiftState, finalize: bool) -> torch.Tensor:
        """Frames of the centred (reflect-padded) STFT that the new samples complete.

        Returns real bins stacked over imaginary bins: [B, n_fft + 2, k] fp32.
        """
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_len
        half = n_fft // 2
        if state.stft_pending is None:
            if source.shape[1] == 0:
                return source.new_zeros(source.shape[0], n_fft + 2, 0)  # nothing to centre on yet
            assert source.shape[1] > half, "first vocoder step needs more than n_fft/2 source samples"
            source = torch.cat([source[:, 1:half + 1].flip(-1), source], dim=1)  # reflect left
            state.stft_pending = source[:, :0]
        buf = torch.cat([state.stft_pending, source], dim=1)
        if finalize:
            buf = torch.cat([buf, buf[:, -half - 1:-1].flip(-1)], dim=1)  # reflect right
        n = max((buf.shape[1] - n_fft) // hop + 1, 0)
        state.stft_pending = buf[:, n * hop:]
        state.spec_seen += n
        if n == 0:
            return source.new_zeros(source.shape[0], n_fft + 2, 0)
        spec = torch.stft(buf[:, : (n - 1) * hop + n_fft], n_fft, hop, n_fft, window=self.window,
                          center=False, return_complex=True)  # [B, n_fft/2+1, n]
        return torch.cat([spec.real, spec.imag], dim=1)

    def _trunk(self, x: torch.Tensor, spec: torch.Tensor, buffers: ConvBuffers, first: bool) -> torch.Tensor:
        """conv_pre frames [1, C, b] + matching source-STFT frames -> conv_post out [1, 18, 120b(+1)]."""
        last = len(self.ups) - 1
        per_stage = len(self.cfg.resblock_kernel_sizes)
        for i, (up, rate) in enumerate(zip(self.ups, self.cfg.upsample_rates)):
            x = F.leaky_relu(x, self.cfg.lrelu_slope)
            # nn.ModuleList items are typed nn.Module; ups and source_downs hold StreamConv1d
            x = cast(StreamConv1d, up).stream(x.repeat_interleave(rate, dim=2), buffers)
            if i == last and first:
                x = torch.cat([x[:, :, 1:2], x], dim=2)  # reflection pad (1, 0) at stream start
            down = cast(StreamConv1d, self.source_downs[i])
            si = self.source_resblocks[i](down.stream(spec, buffers), buffers)
            assert si.shape == x.shape, (i, si.shape, x.shape)
            x = x + si
            xs = self.resblocks[i * per_stage](x, buffers)
            for j in range(1, per_stage):
                xs = xs + self.resblocks[i * per_stage + j](x, buffers)
            x = xs / per_stage
        x = F.leaky_relu(x)  # default slope 0.01 here, unlike the stages
        return self.conv_post.stream(x, buffers).float()

    def _istft(self, y: torch.Tensor | None, state: HiftState, finalize: bool, rows: int) -> torch.Tensor:
        """Overlap-add the frames in y [B, 18, k]; return samples no later frame touches [B, L]."""
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_len
        overlap = n_fft - hop
        if state.ola_tail is None:
            if y is None:
                return self.window.new_zeros(rows, 0)  # no frame yet: nothing to release or flush
            state.ola_tail = self.window.new_zeros(rows, 2, overlap)
        if y is not None and y.shape[2]:
            k = y.shape[2]
            bins = n_fft // 2 + 1
            magnitude = torch.exp(y[:, :bins]).clamp(max=1e2)
            phase = torch.sin(y[:, bins:])
            spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
            frames = torch.fft.irfft(spec, n=n_fft, dim=1) * self.window.view(1, -1, 1)  # [B, n_fft, k]
            # the window envelope is the same for every row: overlap-add it once
            env = _overlap_add((self.window**2).view(1, -1, 1).expand(1, n_fft, k), hop)  # [1, L]
            ola = torch.stack([_overlap_add(frames, hop), env.expand(rows, -1)], dim=1)  # [B, 2, L]
            ola[:, :, :overlap] += state.ola_tail
            done, state.ola_tail = ola[:, :, : k * hop], ola[:, :, k * hop:]
        else:
            done = state.ola_tail[:, :, :0]
        if finalize:
            done = torch.cat([done, state.ola_tail], dim=2)[:, :, : done.shape[2] + overlap - n_fft // 2]
        # centre=True: the first n_fft/2 overlap-added samples lie before t=0
        skip = max(n_fft // 2 - state.ola_positions, 0)
        state.ola_positions += done.shape[2]
        done = done[:, :, skip:]
        return (done[:, 0] / done[:, 1]).float()


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Frames [B, n_fft, k] placed every `hop` samples and summed -> [B, (k - 1) hop + n_fft].

    n_fft / hop shifted adds of whole hop-long pieces: F.fold (col2im) does the same sum
    element by element and cost 10 ms a call on 16 stacked rows.
    """
    rows, n_fft, k = frames.shape
    per = n_fft // hop
    assert per * hop == n_fft, (n_fft, hop)
    pieces = frames.view(rows, per, hop, k).transpose(2, 3)  # [B, per, k, hop]
    out = frames.new_zeros(rows, k + per - 1, hop)
    for j in range(per):
        out[:, j:j + k] += pieces[:, j]
    return out.flatten(1)  # [B, k + per - 1, hop] -> [B, L]


def _cat(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else torch.cat([a, b], dim=2)
