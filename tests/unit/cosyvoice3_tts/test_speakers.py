"""CosyVoice3 speakers: our saved-speaker file, upstream spk2info.pt entries, speaker ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from tests.cosyvoice3_tts_tiny import SINE_SAMPLES, tiny_tts_dir
from tests.tts_golden import MODE_INPUTS, PROMPT_WAV, REPO, WAVE_ATOL, case, max_diff
from utils.cosyvoice3.speakers import (
    Speaker,
    load_speaker,
    load_spk2info,
    save_speaker,
    speaker_from_spk2info_entry,
    spk2info_entry,
)
from utils.cosyvoice3.synthesizer import CosyVoice3Tts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test layout with a spk2info.pt holding upstream-style entries built from the
    golden front-end outputs: a zero-shot speaker and an embedding-only (sft) one."""
    root = tiny_tts_dir(tmp_path_factory.mktemp("cv3_spk") / "tiny")
    e = case("e2e_zero_shot")
    zero_shot = {
        "prompt_text": e["prompt_text"][None], "prompt_text_len": torch.tensor([74], dtype=torch.int32),
        "llm_prompt_speech_token": e["llm_prompt_speech_token"][None],
        "flow_prompt_speech_token": e["flow_prompt_speech_token"][None],
        "prompt_speech_feat": e["prompt_speech_feat"],
        "llm_embedding": e["flow_embedding"], "flow_embedding": e["flow_embedding"],
    }
    torch.save({"golden": zero_shot, "sft_only": {"embedding": e["flow_embedding"]}}, root / "spk2info.pt")
    return root


@pytest.fixture(scope="module")
def tts(model_dir: Path) -> CosyVoice3Tts:
    return CosyVoice3Tts.from_model_dir(model_dir, sine_samples=SINE_SAMPLES)


@pytest.fixture(scope="module")
def speaker(tts: CosyVoice3Tts) -> Speaker:
    return tts.make_speaker(PROMPT_WAV, MODE_INPUTS["prompt_text"])


def tokens_of(tts: CosyVoice3Tts, speaker: Speaker) -> list[int]:
    (result,) = tts.synthesize_segments(MODE_INPUTS["tts_text"], "zero_shot", speaker)
    return result.tokens


def test_save_load_round_trip(speaker: Speaker, tmp_path: Path) -> None:
    path = tmp_path / "spk" / "voice.safetensors"
    save_speaker(path, speaker)
    loaded = load_speaker(path)
    assert loaded.prompt_ids == speaker.prompt_ids and loaded.prompt_text == speaker.prompt_text
    for name in ("speech_token", "speech_feat", "embedding"):
        assert torch.equal(getattr(loaded.features, name), getattr(speaker.features, name)), name
    assert loaded.features.speech_token.dtype == torch.int32


def test_saved_speaker_reproduces_its_prompts_tokens(tts: CosyVoice3Tts, speaker: Speaker,
                                                     tmp_path: Path) -> None:
    path = tmp_path / "voice.safetensors"
    save_speaker(path, speaker)
    want = case("e2e_zero_shot")["speech_token"].tolist()
    assert tokens_of(tts, speaker) == want
    assert tokens_of(tts, tts.speaker(str(path))) == want  # a file path works as a speaker name


def test_spk2info_speaker_ids(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    assert sorted(tts.speakers) == ["golden", "sft_only"]
    golden = tts.speaker("golden")
    assert golden.has_prompt and golden.prompt_ids == speaker.prompt_ids
    assert tokens_of(tts, golden) == case("e2e_zero_shot")["speech_token"].tolist()
    audio = tts.synthesize(MODE_INPUTS["tts_text"], "zero_shot", golden)
    assert max_diff(torch.from_numpy(audio)[None], case("e2e_zero_shot")["tts_speech"]) <= WAVE_ATOL
    sft = tts.speaker("sft_only")
    assert not sft.has_prompt and sft.n_prompt_tokens == 0
    with pytest.raises(ValueError, match="zero_shot"):
        tts.segments("你好。", "zero_shot", sft)
    (run,) = tts.segments(MODE_INPUTS["tts_text"], "sft", sft)
    assert run.prompt_ids == () and list(run.text_ids) == case("e2e_zero_shot")["tts_text"].tolist()
    with pytest.raises(KeyError, match="unknown speaker"):
        tts.speaker("nobody")


def test_spk2info_entry_round_trip(speaker: Speaker, tmp_path: Path) -> None:
    torch.save({"me": spk2info_entry(speaker)}, tmp_path / "spk2info.pt")
    (back,) = load_spk2info(tmp_path / "spk2info.pt").values()
    assert back.prompt_ids == speaker.prompt_ids
    assert torch.equal(back.features.speech_token, speaker.features.speech_token)
    assert torch.equal(back.features.speech_feat, speaker.features.speech_feat)
    with pytest.raises(ValueError, match="embedding"):
        speaker_from_spk2info_entry({"prompt_text": torch.zeros(1, 1)})


def test_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="cosyvoice3-speaker"):
        load_speaker(tmp_path / "x.safetensors")


def test_cli_saves_and_uses_a_speaker(model_dir: Path, tmp_path: Path) -> None:
    spk, out = tmp_path / "voice.safetensors", tmp_path / "out.wav"
    base = [sys.executable, "-m", "utils.cosyvoice3.tts", "--model-dir", str(model_dir), "--threads", "2",
            "--text", MODE_INPUTS["tts_text"], "--mode", "zero_shot", "--out", str(out)]
    subprocess.run([*base, "--speaker", "golden", "--stream", "--save-speaker", str(spk)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    streamed, _ = sf.read(out, dtype="float32")
    assert load_speaker(spk).prompt_ids == tuple(case("e2e_zero_shot")["prompt_text"].tolist())
    subprocess.run([*base, "--speaker", str(spk), "--stream"], cwd=REPO, check=True, capture_output=True,
                   timeout=300)
    again, _ = sf.read(out, dtype="float32")
    assert streamed.shape == again.shape == (43200,) and abs(streamed - again).max() == 0.0
