"""CosyVoice3 prompt-audio features: a prompt WAV -> what the LLM and the flow are conditioned on.

Spec: shared/specs/cosyvoice3-tts.md §10. The prompt is read at two rates:
- 16 kHz: Whisper 128-bin log-mel (-> speech_tokenizer_v3.onnx -> 25 Hz prompt tokens) and
  80-bin Kaldi fbank minus its mean (-> campplus.onnx -> speaker embedding);
- 24 kHz: the flow's 80-bin prompt mel (Matcha `mel_spectrogram`, 50 Hz).
Every function reproduces upstream's numbers (torchaudio resampler and Kaldi fbank, Matcha,
openai-whisper 20231117) without torchaudio, which has no build beside CPU torch 2.13.
`utils.audio.resample` (soxr) is a different filter and must not be used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .onnx_models import PromptEncoders

TOKENIZER_SAMPLE_RATE = 16_000  # speech tokenizer and speaker embedding
FLOW_SAMPLE_RATE = 24_000  # flow prompt mel (the model's output rate)
MIN_PROMPT_SAMPLE_RATE = 16_000  # upstream asserts this before resampling
MAX_PROMPT_SECONDS = 30  # the speech tokenizer's limit (upstream asserts it)
TOKEN_MEL_RATIO = 2  # 50 Hz mel frames per 25 Hz speech token


# ---------------------------------------------------------------------------------------------
# Loading and resampling (§10.1)

def read_prompt_wav(path: str | Path) -> tuple[Tensor, int]:
    """A WAV (any soundfile format) -> (float32 [1, N] averaged over channels, file rate).

    soundfile's float32 read scales 16-bit PCM by 1/32768, as torchaudio's soundfile backend
    does; averaging keeps the [1, N] shape upstream works with."""
    pcm, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    wave = torch.from_numpy(np.ascontiguousarray(pcm.T)).mean(dim=0, keepdim=True)  # [1, N]
    return wave, int(rate)


def load_wav(path: str | Path, target_sr: int) -> Tensor:
    """Upstream `load_wav`: read, then sinc-resample to target_sr when the rates differ."""
    wave, rate = read_prompt_wav(path)
    return resample_to(wave, rate, target_sr)


def resample_to(wave: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """float32 [C, N] at orig_sr -> [C, N'] at target_sr (unchanged when the rates agree)."""
    if orig_sr == target_sr:
        return wave
    if orig_sr < MIN_PROMPT_SAMPLE_RATE:
        raise ValueError(f"prompt audio must be sampled at >= {MIN_PROMPT_SAMPLE_RATE} Hz, got {orig_sr}")
    return sinc_resample(wave, orig_sr, target_sr)


@cache
def sinc_resample_kernel(orig_sr: int, target_sr: int, *, lowpass_filter_width: int = 6,
                         rolloff: float = 0.99) -> tuple[Tensor, int]:
    """torchaudio's default `Resample` filter (windowed sinc, Hann window): float32 kernels
    [n, 1, 2w + o] (one per output phase) and the half-width w, for o:n = orig:target reduced.

    The mixed precision is deliberate: tap offsets k/o are fp64, phase offsets j/n fp32 (then
    promoted), the kernel is built in fp64 and cast to fp32; that is what makes it bit-equal
    to torchaudio's. Cached: it only depends on the rates."""
    g = math.gcd(orig_sr, target_sr)
    o, n = orig_sr // g, target_sr // g
    base = min(o, n) * rolloff  # cutoff below the lower Nyquist rate, in units of the reduced rates
    width = math.ceil(lowpass_filter_width * o / base)
    taps = torch.arange(-width, width + o, dtype=torch.float64) / o  # [2w+o]
    phases = torch.arange(0, -n, -1, dtype=torch.float32) / n  # [n]
    t = ((phases[:, None].double() + taps[None, :]) * base).clamp(-lowpass_filter_width,
                                                                    lowpass_filter_width)  # [n, 2w+o]
    window = torch.cos(t * (math.pi / lowpass_filter_width / 2)) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = (sinc * window * (base / o)).to(torch.float32)
    return kernel[:, None, :], width  # [n, 1, 2w+o]


def sinc_resample(wave: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """float32 [C, N] -> [C, ceil(N * target / orig)] with torchaudio's default sinc resampler."""
    if wave.ndim != 2:
        raise ValueError(f"expected [C, N] audio, got shape {tuple(wave.shape)}")
    kernel, width = sinc_resample_kernel(orig_sr, target_sr)
    g = math.gcd(orig_sr, target_sr)
    o, n = orig_sr // g, target_sr // g
    channels, length = wave.shape
    padded = torch.nn.functional.pad(wave.to(torch.float32), (width, width + o))  # [C, N+2w+o]
    phased = torch.nn.functional.conv1d(padded[:, None], kernel, stride=o)  # [C, n, N/o+1]
    out = phased.transpose(1, 2).reshape(channels, -1)  # [C, n*(N/o+1)]: phases interleaved
    return out[:, : math.ceil(n * length / o)]


# ---------------------------------------------------------------------------------------------
# Mel filter banks (librosa `filters.mel`, Slaney scale and area normalisation)

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz, 200/3 Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel[log_part] = _MIN_LOG_MEL + np.log(hz[log_part] / _MIN_LOG_HZ) / _LOG_STEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = _F_SP * mel
    log_part = mel >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel[log_part] - _MIN_LOG_MEL))
    return hz


@cache
def slaney_mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                     fmax: float | None = None) -> Tensor:
    """float32 [n_mels, n_fft//2 + 1]: librosa's default mel basis (htk=False, norm="slaney").

    Written out so that neither librosa (not a dependency of ours) nor whisper's asset file is
    needed; it equals both (`filterbanks` golden). Triangles are computed in fp64, stored in
    fp32 and then scaled in place, the rounding order librosa has. Cached per configuration
    (upstream's Matcha cache keys only on fmax; keying on everything avoids its stale reuse)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # [F]
    edges_mel = np.linspace(_hz_to_mel(np.array([fmin], dtype=np.float64))[0],
                            _hz_to_mel(np.array([fmax], dtype=np.float64))[0], n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel)  # [n_mels+2]
    widths = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, fft_hz)  # [n_mels+2, F]
    weights = np.zeros((n_mels, len(fft_hz)), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per filter
    return torch.from_numpy(weights)


# ---------------------------------------------------------------------------------------------
# Flow prompt mel (§10.2): Matcha `mel_spectrogram` as configured in cosyvoice3.yaml

@dataclass(frozen=True)
class FlowMelConfig:
    """feat_extractor arguments of cosyvoice3.yaml (fmax null -> Nyquist)."""

    sample_rate: int = FLOW_SAMPLE_RATE
    n_fft: int = 1920
    hop: int = 480
    win: int = 1920
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None


FLOW_MEL = FlowMelConfig()


def flow_prompt_mel(speech_24k: Tensor, cfg: FlowMelConfig = FLOW_MEL) -> Tensor:
    """float32 [1, N] at 24 kHz -> natural-log mel [1, T, 80], T = N // 480 (50 Hz)."""
    _check_wave(speech_24k)
    pad = (cfg.n_fft - cfg.hop) // 2  # centres frames without torch.stft's center padding
    if speech_24k.shape[1] <= pad:
        raise ValueError(f"prompt audio too short for a mel frame: {speech_24k.shape[1]} samples")
    padded = torch.nn.functional.pad(speech_24k[:, None], (pad, pad), mode="reflect")[:, 0]  # [1, N+2p]
    window = torch.hann_window(cfg.win, device=speech_24k.device)
    spec = torch.stft(padded, cfg.n_fft, hop_length=cfg.hop, win_length=cfg.win, window=window,
                      center=False, onesided=True, return_complex=True)  # [1, F, T]
    spec = torch.view_as_real(spec)  # [1, F, T, 2]
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)  # the 1e-9 keeps sqrt's gradient finite upstream
    basis = slaney_mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)  # [80, F]
    basis = basis.to(magnitude.device)
    mel = basis @ magnitude  # [1, 80, T]
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)  # [1, T, 80]


# ---------------------------------------------------------------------------------------------
# Whisper log-mel (§10.3): openai-whisper 20231117 `log_mel_spectrogram`, without 30 s padding

WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_N_MELS = 128


def whisper_log_mel(speech_16k: Tensor) -> Tensor:
    """float32 [1, N] at 16 kHz -> [1, 128, N // 160] scaled log10 mel (100 Hz).

    Not `utils.funaudiochat.frontend.LogMelFrontend`: it pads every clip to 30 s with zeros
    before the STFT, so its last two frames differ (by 0.05 on the golden prompt) from what the
    speech tokenizer was fed upstream. (transformers' extractor with padding="longest" agrees,
    but would pull transformers into the TTS front end for ten lines of torch.)"""
    _check_wave(speech_16k)
    if speech_16k.shape[1] > MAX_PROMPT_SECONDS * TOKENIZER_SAMPLE_RATE:
        raise ValueError(f"prompt audio longer than {MAX_PROMPT_SECONDS} s cannot be tokenized")
    if speech_16k.shape[1] <= WHISPER_N_FFT // 2:
        raise ValueError(f"prompt audio too short for a log-mel frame: {speech_16k.shape[1]} samples")
    window = torch.hann_window(WHISPER_N_FFT, device=speech_16k.device)
    stft = torch.stft(speech_16k, WHISPER_N_FFT, WHISPER_HOP, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # [1, 201, N//160 + 1]
    power = stft[..., :-1].abs() ** 2  # whisper drops the frame centred past the end
    basis = slaney_mel_basis(TOKENIZER_SAMPLE_RATE, WHISPER_N_FFT, WHISPER_N_MELS).to(power.device)
    mel = basis @ power  # [1, 128, T]
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)  # 80 dB dynamic range over the clip
    return (log_spec + 4.0) / 4.0


# ---------------------------------------------------------------------------------------------
# Speaker fbank (§10.5): torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0)

FBANK_MEL_BINS = 80


def kaldi_fbank(speech_16k: Tensor) -> Tensor:
    """float32 [1, N] at 16 kHz in ±1 -> log Kaldi fbank [T, 80], T = 1 + (N - 400) // 160.

    kaldi-native-fbank with torchaudio's defaults (25/10 ms, snip_edges, DC removal, pre-emphasis
    0.97, Povey window, power spectrum, 20 Hz-Nyquist, no dither, no energy); it agrees with
    torchaudio to <= 1.8e-4 (float32 FFTs differ). The waveform is fed unscaled, as upstream
    feeds torchaudio (not int16-scaled as Kaldi usually is)."""
    import kaldi_native_fbank as knf  # type: ignore[import-untyped]  # C++ wheel, no types; only needed here

    _check_wave(speech_16k)
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = TOKENIZER_SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = FBANK_MEL_BINS
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(TOKENIZER_SAMPLE_RATE, speech_16k[0].detach().cpu().numpy())
    fbank.input_finished()
    frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
    if not frames:
        raise ValueError(f"prompt audio too short for a fbank frame: {speech_16k.shape[1]} samples")
    return torch.from_numpy(np.stack(frames).astype(np.float32, copy=False))  # [T, 80]


def speaker_fbank(speech_16k: Tensor) -> Tensor:
    """campplus input: Kaldi fbank minus its per-bin mean over time, [1, T, 80]."""
    feat = kaldi_fbank(speech_16k)  # [T, 80]
    return (feat - feat.mean(dim=0, keepdim=True))[None]


# ---------------------------------------------------------------------------------------------
# Zero-shot alignment (§10.6)

def trim_to_token_rate(speech_token: Tensor, speech_feat: Tensor) -> tuple[Tensor, Tensor]:
    """Cut prompt tokens [1, T_tok] and mel [1, T_mel, 80] to a common length L tokens / 2L frames,
    L = min(T_mel // 2, T_tok), because the flow requires exactly 2 mel frames per prompt token."""
    length = min(speech_feat.shape[1] // TOKEN_MEL_RATIO, speech_token.shape[1])
    return speech_token[:, :length], speech_feat[:, : TOKEN_MEL_RATIO * length]


# ---------------------------------------------------------------------------------------------
# Everything a prompt contributes (§4.5: zero-shot, cross-lingual and instruct2 use all three)

@dataclass(frozen=True)
class PromptFeatures:
    """A prompt WAV's speech tokens, flow mel and speaker embedding, trimmed to each other.

    Built once per prompt (e.g. per cached speaker) and read-only afterwards, so one instance
    may serve concurrent requests. The tokens feed both the LLM and the flow."""

    speech_token: Tensor  # int32 [1, L] at 25 Hz
    speech_feat: Tensor  # float32 [1, 2L, 80] at 50 Hz (24 kHz natural-log mel)
    embedding: Tensor  # float32 [1, 192]

    def __post_init__(self) -> None:
        if self.speech_feat.shape[1] != TOKEN_MEL_RATIO * self.speech_token.shape[1]:
            raise ValueError(f"{self.speech_token.shape[1]} prompt tokens need "
                             f"{TOKEN_MEL_RATIO * self.speech_token.shape[1]} mel frames, "
                             f"got {self.speech_feat.shape[1]}")


def prompt_features(wave: Tensor, sample_rate: int, encoders: PromptEncoders) -> PromptFeatures:
    """Mono float32 [1, N] at any rate >= 16 kHz -> PromptFeatures.

    Both analysis rates are resampled from the same input, which is what upstream's three
    `load_wav` calls of one file amount to: a 16 kHz input is used as is for the tokens and
    the embedding and upsampled for the mel, a 24 kHz input the other way round."""
    speech_16k = resample_to(wave, sample_rate, TOKENIZER_SAMPLE_RATE)  # [1, N16]
    speech_24k = resample_to(wave, sample_rate, FLOW_SAMPLE_RATE)  # [1, N24]
    speech_token = encoders.speech_tokenizer(whisper_log_mel(speech_16k))  # [1, T_tok]
    embedding = encoders.speaker_encoder(speaker_fbank(speech_16k))  # [1, 192]
    speech_feat = flow_prompt_mel(speech_24k)  # [1, T_mel, 80]
    speech_token, speech_feat = trim_to_token_rate(speech_token, speech_feat)
    return PromptFeatures(speech_token=speech_token, speech_feat=speech_feat, embedding=embedding)


def prompt_features_from_wav(path: str | Path, encoders: PromptEncoders) -> PromptFeatures:
    """A prompt audio file -> PromptFeatures (see `prompt_features`)."""
    wave, rate = read_prompt_wav(path)
    return prompt_features(wave, rate, encoders)


def _check_wave(wave: Tensor) -> None:
    if wave.ndim != 2 or wave.shape[0] != 1:
        raise ValueError(f"expected mono audio of shape [1, N], got {tuple(wave.shape)}")
