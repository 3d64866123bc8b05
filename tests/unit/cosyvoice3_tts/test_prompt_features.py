"""CosyVoice3 prompt-audio features against upstream's goldens (cases features_prompt24k,
features_prompt16k, filterbanks; tolerances from the fixtures' README)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.tts_golden import (
    FBANK_ATOL,
    FIXTURES,
    PROMPT_MEL_ATOL,
    PROMPT_MEL_UPSAMPLED_ATOL,
    RESAMPLE_ATOL,
    WHISPER_MEL_ATOL,
    case,
    case_metadata,
    max_diff,
)
from utils.cosyvoice3 import prompt_features as pf
from utils.cosyvoice3.onnx_models import PromptEncoders

WEIGHTS = FIXTURES / "weights"
# (case, prompt file, flow-mel tolerance): the 16 kHz file's mel is computed from upsampled audio,
# whose almost empty bands above 8 kHz make the log sensitive (README).
CASES = [
    ("features_prompt24k", "prompt_24k.wav", PROMPT_MEL_ATOL),
    ("features_prompt16k", "prompt_16k.wav", PROMPT_MEL_UPSAMPLED_ATOL),
]
EMBEDDING_ATOL = 1e-5  # tiny campplus is smooth: fbank error <= 5e-4 moves it ~1e-6


@pytest.fixture(scope="module")
def encoders() -> PromptEncoders:
    return PromptEncoders.from_model_dir(WEIGHTS, use_cuda=False)


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def golden(request: pytest.FixtureRequest) -> tuple[dict[str, torch.Tensor], Path, float]:
    name, wav, mel_atol = request.param
    return case(name), FIXTURES / "audio" / wav, mel_atol


# --- constant matrices -------------------------------------------------------------------------

def test_mel_bases_equal_librosa_and_whisper() -> None:
    fb = case("filterbanks")
    # librosa 0.10.2 left one ~7e-18 entry where 0.11 (and we) give 0: fp noise, not a difference
    assert max_diff(pf.slaney_mel_basis(24_000, 1920, 80), fb["librosa_mel_24k_1920_80"]) < 1e-12
    assert max_diff(pf.slaney_mel_basis(16_000, 400, 128), fb["whisper_mel_filters_128"]) == 0.0


@pytest.mark.parametrize(("orig", "new", "name"), [(24_000, 16_000, "resample_kernel_24k_to_16k"),
                                                   (16_000, 24_000, "resample_kernel_16k_to_24k")])
def test_resample_kernels(orig: int, new: int, name: str) -> None:
    kernel, width = pf.sinc_resample_kernel(orig, new)
    want = case("filterbanks")[name]
    assert kernel.dtype == torch.float32
    assert max_diff(kernel, want) <= 1e-7
    widths = json.loads(case_metadata("filterbanks")["notes"])["resample_width"]
    assert width == widths[f"{orig // 1000}k_to_{new // 1000}k"]


# --- loading and resampling --------------------------------------------------------------------

def test_load_and_resample(golden: tuple[dict[str, torch.Tensor], Path, float]) -> None:
    c, wav, _ = golden
    wave, rate = pf.read_prompt_wav(wav)
    assert wave.shape == c["wav"].shape and max_diff(wave, c["wav"]) == 0.0
    assert rate in (16_000, 24_000)
    speech_16k = pf.load_wav(wav, 16_000)
    speech_24k = pf.load_wav(wav, 24_000)
    assert speech_16k.dtype == speech_24k.dtype == torch.float32
    assert max_diff(speech_16k, c["speech_16k"]) <= RESAMPLE_ATOL
    assert max_diff(speech_24k, c["speech_24k"]) <= RESAMPLE_ATOL


def test_resample_length_and_identity() -> None:
    wave = torch.randn(1, 1001)
    assert pf.resample_to(wave, 24_000, 24_000) is wave
    assert pf.sinc_resample(wave, 24_000, 16_000).shape == (1, math.ceil(1001 * 2 / 3))
    assert pf.sinc_resample(wave, 16_000, 24_000).shape == (1, math.ceil(1001 * 3 / 2))


def test_resample_rejects_low_rates() -> None:
    with pytest.raises(ValueError, match="16000"):
        pf.resample_to(torch.zeros(1, 800), 8_000, 16_000)


def test_channels_are_averaged(tmp_path: Path) -> None:
    left, right = np.full(480, 0.25, np.float32), np.full(480, -0.5, np.float32)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 24_000, subtype="FLOAT")
    wave, rate = pf.read_prompt_wav(tmp_path / "stereo.wav")
    assert rate == 24_000 and wave.shape == (1, 480)
    assert torch.allclose(wave, torch.full((1, 480), -0.125))


# --- features --------------------------------------------------------------------------------

def test_flow_prompt_mel(golden: tuple[dict[str, torch.Tensor], Path, float]) -> None:
    c, wav, mel_atol = golden
    mel = pf.flow_prompt_mel(pf.load_wav(wav, 24_000))
    assert mel.shape == c["speech_feat"].shape == (1, c["speech_24k"].shape[1] // 480, 80)
    assert max_diff(mel, c["speech_feat"]) <= mel_atol
    # from the golden 24 kHz audio too, so that the mel is checked apart from the resampler
    assert max_diff(pf.flow_prompt_mel(c["speech_24k"]), c["speech_feat"]) <= mel_atol


def test_whisper_log_mel(golden: tuple[dict[str, torch.Tensor], Path, float]) -> None:
    c, wav, _ = golden
    log_mel = pf.whisper_log_mel(pf.load_wav(wav, 16_000))
    assert log_mel.shape == c["whisper_logmel"].shape == (1, 128, c["speech_16k"].shape[1] // 160)
    assert max_diff(log_mel, c["whisper_logmel"]) <= WHISPER_MEL_ATOL


def test_whisper_log_mel_rejects_over_30_s() -> None:
    with pytest.raises(ValueError, match="30 s"):
        pf.whisper_log_mel(torch.zeros(1, 30 * 16_000 + 1))


def test_kaldi_fbank_and_mean_removal(golden: tuple[dict[str, torch.Tensor], Path, float]) -> None:
    c, wav, _ = golden
    speech_16k = pf.load_wav(wav, 16_000)
    fbank = pf.kaldi_fbank(speech_16k)
    assert fbank.shape == c["kaldi_fbank"].shape == (1 + (speech_16k.shape[1] - 400) // 160, 80)
    assert max_diff(fbank, c["kaldi_fbank"]) <= FBANK_ATOL
    normed = pf.speaker_fbank(speech_16k)
    assert normed.shape == (1, *c["kaldi_fbank_meannorm"].shape)
    assert max_diff(normed[0], c["kaldi_fbank_meannorm"]) <= FBANK_ATOL


def test_too_short_audio_is_rejected() -> None:
    with pytest.raises(ValueError, match="too short"):
        pf.kaldi_fbank(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="too short"):
        pf.flow_prompt_mel(torch.zeros(1, 720))
    with pytest.raises(ValueError, match="too short"):
        pf.whisper_log_mel(torch.zeros(1, 200))


# --- ONNX models -------------------------------------------------------------------------------

def test_speech_tokens_exact(golden: tuple[dict[str, torch.Tensor], Path, float],
                             encoders: PromptEncoders) -> None:
    c, wav, _ = golden
    from_golden_mel = encoders.speech_tokenizer(c["whisper_logmel"])
    assert from_golden_mel.dtype == torch.int32 and from_golden_mel.shape == (1, c["speech_token"].shape[0])
    assert torch.equal(from_golden_mel[0], c["speech_token"])
    ours = encoders.speech_tokenizer(pf.whisper_log_mel(pf.load_wav(wav, 16_000)))
    assert torch.equal(ours[0], c["speech_token"])
    assert ours.shape[1] == math.ceil(c["whisper_logmel"].shape[2] / 4)


def test_speaker_embedding(golden: tuple[dict[str, torch.Tensor], Path, float],
                           encoders: PromptEncoders) -> None:
    c, wav, _ = golden
    from_golden_fbank = encoders.speaker_encoder(c["kaldi_fbank_meannorm"][None])
    assert from_golden_fbank.dtype == torch.float32 and from_golden_fbank.shape == (1, 192)
    assert max_diff(from_golden_fbank, c["spk_embedding"]) <= 1e-6
    ours = encoders.speaker_encoder(pf.speaker_fbank(pf.load_wav(wav, 16_000)))
    assert max_diff(ours, c["spk_embedding"]) <= EMBEDDING_ATOL


def test_onnx_sessions_are_lazy_and_shared_across_threads() -> None:
    encoders = PromptEncoders.from_model_dir(WEIGHTS, use_cuda=False)
    loaded_before = encoders.speech_tokenizer.loaded
    assert not loaded_before  # nothing loads before the first call
    log_mel = case("features_prompt24k")["whisper_logmel"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: encoders.speech_tokenizer(log_mel), range(8)))
    assert all(torch.equal(r, results[0]) for r in results)
    assert encoders.speech_tokenizer.loaded and not encoders.speaker_encoder.loaded
    assert encoders.speech_tokenizer.session().get_providers() == ["CPUExecutionProvider"]


def test_model_dir_needs_both_files(tmp_path: Path) -> None:
    tokenizer = (WEIGHTS / "tiny_speech_tokenizer_v3.onnx").read_bytes()
    (tmp_path / "speech_tokenizer_v3.onnx").write_bytes(tokenizer)
    with pytest.raises(FileNotFoundError, match=r"campplus\.onnx"):
        PromptEncoders.from_model_dir(tmp_path)


def test_onnx_inputs_are_checked(encoders: PromptEncoders) -> None:
    with pytest.raises(ValueError, match=r"\[1, 128, T\]"):
        encoders.speech_tokenizer(torch.zeros(1, 80, 10))
    with pytest.raises(ValueError, match=r"\[1, T, 80\]"):
        encoders.speaker_encoder(torch.zeros(10, 80))


# --- zero-shot trimming and the whole prompt -------------------------------------------------------

def test_zero_shot_trimming(golden: tuple[dict[str, torch.Tensor], Path, float]) -> None:
    c, _, _ = golden
    tokens, feat = pf.trim_to_token_rate(c["speech_token"][None], c["speech_feat"])
    assert torch.equal(tokens[0], c["prompt_speech_token_trimmed"])  # 43 tokens, 85 frames -> L = 42
    assert torch.equal(feat, c["prompt_speech_feat_trimmed"])


def test_trimming_when_tokens_are_fewer() -> None:
    tokens, feat = pf.trim_to_token_rate(torch.arange(5, dtype=torch.int32)[None], torch.zeros(1, 13, 80))
    assert tokens.shape == (1, 5) and feat.shape == (1, 10, 80)


def test_prompt_features_from_wav(golden: tuple[dict[str, torch.Tensor], Path, float],
                                  encoders: PromptEncoders) -> None:
    c, wav, mel_atol = golden
    features = pf.prompt_features_from_wav(wav, encoders)
    assert features.speech_token.dtype == torch.int32
    assert torch.equal(features.speech_token[0], c["prompt_speech_token_trimmed"])
    assert features.speech_feat.shape == c["prompt_speech_feat_trimmed"].shape
    assert max_diff(features.speech_feat, c["prompt_speech_feat_trimmed"]) <= mel_atol
    assert max_diff(features.embedding, c["spk_embedding"]) <= EMBEDDING_ATOL


def test_prompt_features_from_memory_equals_from_file(encoders: PromptEncoders) -> None:
    wav = FIXTURES / "audio" / "prompt_24k.wav"
    wave, rate = pf.read_prompt_wav(wav)
    a, b = pf.prompt_features(wave, rate, encoders), pf.prompt_features_from_wav(wav, encoders)
    assert torch.equal(a.speech_token, b.speech_token)
    assert torch.equal(a.speech_feat, b.speech_feat) and torch.equal(a.embedding, b.embedding)


def test_prompt_features_checks_alignment() -> None:
    with pytest.raises(ValueError, match="mel frames"):
        pf.PromptFeatures(speech_token=torch.zeros(1, 4, dtype=torch.int32),
                          speech_feat=torch.zeros(1, 7, 80), embedding=torch.zeros(1, 192))
