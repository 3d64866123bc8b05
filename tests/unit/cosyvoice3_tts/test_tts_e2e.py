"""CosyVoice3 TTS end to end against upstream's goldens (cases e2e_zero_shot, stream_zero_shot,
facts.stream_schedule_long; the greedy tiny LLM and the tiny flow/HiFT), the other modes, the
release layout, text given in pieces and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.cosyvoice3_tts_tiny import SINE_SAMPLES, tiny_release_dir, tiny_tts_dir
from tests.tts_golden import (
    MODE_INPUTS,
    PROMPT_MEL_ATOL,
    PROMPT_WAV,
    REPO,
    WAVE_ATOL,
    case,
    case_metadata,
    manifest,
    max_diff,
)
from utils.cosyvoice3.speakers import Speaker
from utils.cosyvoice3.synthesizer import CosyVoice3Tts, sentences
from utils.cosyvoice3.tts_token2wav import (
    PromptedCachedStream,
    PromptedUpstreamCall,
    UpstreamScheduleStream,
    offline_prompted,
)

FLOW_MEL_ATOL = 2e-5  # the token2wav goldens' flow tolerance
EMBEDDING_ATOL = 1e-5  # tiny campplus on a 5e-4 fbank (test_prompt_features)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tts_dir(tmp_path_factory.mktemp("cv3_tts") / "tiny")


@pytest.fixture(scope="module")
def tts(model_dir: Path) -> CosyVoice3Tts:
    return CosyVoice3Tts.from_model_dir(model_dir, sine_samples=SINE_SAMPLES)


@pytest.fixture(scope="module")
def speaker(tts: CosyVoice3Tts) -> Speaker:
    return tts.make_speaker(PROMPT_WAV, MODE_INPUTS["prompt_text"])


def pcm(t: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(t, dtype=np.float32))[None]


# --- e2e_zero_shot ---------------------------------------------------------------------------

def test_front_end_outputs(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    e = case("e2e_zero_shot")
    (run,) = tts.segments(MODE_INPUTS["tts_text"], "zero_shot", speaker)
    assert list(run.text_ids) == e["tts_text"].tolist()
    assert list(run.prompt_ids) == list(speaker.prompt_ids) == e["prompt_text"].tolist()
    f = speaker.features
    assert f.speech_token[0].tolist() == e["llm_prompt_speech_token"].tolist()
    assert f.speech_token[0].tolist() == e["flow_prompt_speech_token"].tolist()
    assert max_diff(f.speech_feat, e["prompt_speech_feat"]) <= PROMPT_MEL_ATOL
    assert max_diff(f.embedding, e["flow_embedding"]) <= EMBEDDING_ATOL


def test_e2e_zero_shot(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    e = case("e2e_zero_shot")
    (result,) = tts.synthesize_segments(MODE_INPUTS["tts_text"], "zero_shot", speaker)
    assert result.tokens == e["speech_token"].tolist() and len(result.tokens) == 45
    assert max_diff(pcm(result.audio), e["tts_speech"]) <= WAVE_ATOL
    # the one token2wav call of the case, with its flow mel
    call = PromptedUpstreamCall(tts.token2wav, speaker.features, record=True)
    audio = call(result.tokens, 0, stream=False, finalize=True)
    assert call.calls is not None and len(call.calls) == 1
    assert tuple(call.calls[0].mel.shape) == (1, 80, 90)
    assert max_diff(call.calls[0].mel, e["flow_mel"]) <= FLOW_MEL_ATOL
    assert max_diff(pcm(audio), e["tts_speech"]) <= WAVE_ATOL
    whole = tts.synthesize(MODE_INPUTS["tts_text"], "zero_shot", speaker)
    assert whole.shape == (43200,) and max_diff(pcm(whole), e["tts_speech"]) <= WAVE_ATOL


# --- stream_zero_shot -------------------------------------------------------------------------

def test_stream_zero_shot_upstream_schedule(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    s = case("stream_zero_shot")
    notes = json.loads(case_metadata("stream_zero_shot")["notes"])
    stream = UpstreamScheduleStream(tts.token2wav, speaker.features, record=True)
    chunks = [stream.push([t]) for t in s["speech_token"].tolist()] + [stream.finalize()]
    chunks = [c for c in chunks if c.size]
    calls = stream.call.calls
    assert calls is not None
    assert [(c.n_tokens, c.token_offset, c.stream, c.finalize) for c in calls] == [
        (c["n_tokens_in"], c["token_offset"], c["stream"], c["finalize"]) for c in notes["calls"]] == [
        (36, 0, True, False), (45, 33, False, True)]
    assert [len(c) for c in chunks] == notes["yielded_chunks"] == [27840, 15360]
    for i, call in enumerate(calls):
        assert call.mel.shape[2] == notes["calls"][i]["flow_mel_frames"]
        assert s[f"call{i}_token"].tolist() == s["speech_token"].tolist()[:call.n_tokens]
        assert max_diff(call.mel, s[f"call{i}_flow_mel"]) <= FLOW_MEL_ATOL
        assert max_diff(pcm(call.audio), s[f"call{i}_speech"]) <= WAVE_ATOL
    assert max_diff(pcm(np.concatenate(chunks)), s["concat_speech"]) <= WAVE_ATOL
    # the same through the synthesizer, tokens streamed from the LLM
    got = list(tts.stream(MODE_INPUTS["tts_text"], "zero_shot", speaker, schedule="upstream"))
    assert [len(c) for c in got] == [27840, 15360]
    assert max_diff(pcm(np.concatenate(got)), s["concat_speech"]) <= WAVE_ATOL


def test_stream_schedule_long(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    fact = manifest()["facts"]["stream_schedule_long"]
    assert speaker.n_prompt_tokens == fact["prompt_tokens"] == 42
    tokens = (case("e2e_zero_shot")["speech_token"].tolist() * 4)[:fact["n_tokens"]]
    stream = UpstreamScheduleStream(tts.token2wav, speaker.features, record=True)
    sizes = [len(stream.push([t])) for t in tokens] + [len(stream.finalize())]
    calls = stream.call.calls
    assert calls is not None
    assert [(c.n_tokens, c.token_offset, c.stream, c.finalize) for c in calls] == [
        (c["n_tokens_in"], c["token_offset"], c["stream"], c["finalize"]) for c in fact["calls"]]
    assert [c.mel.shape[2] for c in calls] == [c["flow_mel_frames"] for c in fact["calls"]]
    assert [s for s in sizes if s] == [c["speech_samples"] for c in fact["calls"]]


def test_cached_stream_matches_upstream_chunks(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    """Cached chunks equal upstream's chunk-masked call; only the end differs (upstream's last
    call is full attention), and first audio comes after 11 tokens (the prompt chunk's rest +
    3 lookahead) instead of 36."""
    s = case("stream_zero_shot")
    stream = PromptedCachedStream(tts.token2wav, speaker.features, record=True)
    tokens = s["speech_token"].tolist()
    out = [stream.push([t]) for t in tokens]
    first = next(i for i, c in enumerate(out) if c.size) + 1
    assert first == 50 + 3 - 42
    out.append(stream.finalize())
    audio = np.concatenate(out)
    assert stream.mel_chunks is not None
    assert [m.shape[2] for m in stream.mel_chunks] == [16, 50, 24]
    mel = torch.cat(stream.mel_chunks, dim=2)
    assert max_diff(mel[:, :, :66], s["call0_flow_mel"]) <= FLOW_MEL_ATOL
    assert audio.shape == (43200,)
    assert max_diff(pcm(audio[:27840]), s["call0_speech"]) <= WAVE_ATOL
    got = list(tts.stream(MODE_INPUTS["tts_text"], "zero_shot", speaker))
    assert max_diff(pcm(np.concatenate(got)), pcm(audio)) <= WAVE_ATOL


# --- other modes, layouts, text in pieces -------------------------------------------------------

def test_instruct2_and_cross_lingual_tokens(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    g = case("llm_generate_greedy")
    (run,) = tts.synthesize_segments(MODE_INPUTS["tts_text"], "instruct2", speaker,
                                     instruct=MODE_INPUTS["instruct_text"])
    assert list(run.text.llm_ids) == g["instruct2.llm_text"].tolist()
    assert run.tokens == g["instruct2.tokens"].tolist() and len(run.tokens) == 103
    assert run.audio.shape == (960 * 103,)  # 2 mel frames of 480 samples per token
    assert max_diff(pcm(run.audio), pcm(offline_prompted(tts.token2wav, speaker.features, run.tokens))) == 0.0
    # random weights: the argmax is a stop id before min_len, upstream raises in the LLM thread
    (cl,) = tts.synthesize_segments(MODE_INPUTS["cross_lingual_tts_text"], "cross_lingual", speaker)
    assert list(cl.text.llm_ids) == g["cross_lingual.llm_text"].tolist()
    assert cl.tokens == g["cross_lingual.tokens"].tolist() == [] and cl.audio.size == 0
    with pytest.raises(ValueError, match="instruct"):
        tts.segments("x", "instruct2", speaker)


def test_release_layout(tmp_path: Path) -> None:
    tts = CosyVoice3Tts.from_model_dir(tiny_release_dir(tmp_path / "release"), sine_samples=SINE_SAMPLES)
    spk = tts.make_speaker(PROMPT_WAV, MODE_INPUTS["prompt_text"])
    (result,) = tts.synthesize_segments(MODE_INPUTS["tts_text"], "zero_shot", spk)
    e = case("e2e_zero_shot")
    assert result.tokens == e["speech_token"].tolist()
    assert max_diff(pcm(result.audio), e["tts_speech"]) <= WAVE_ATOL


def test_sentences_are_cut_as_soon_as_they_end() -> None:
    consumed: list[str] = []

    def pieces() -> Iterator[str]:
        for p in ("Hi, ", "你好！", "It costs 3", ".5 dollars. ", "Bye"):
            consumed.append(p)
            yield p

    got = sentences(pieces())
    assert next(got) == "Hi, 你好！" and consumed == ["Hi, ", "你好！"]
    assert next(got) == "It costs 3.5 dollars." and len(consumed) == 4
    assert list(got) == ["Bye"]


def test_stream_text_pieces(tts: CosyVoice3Tts, speaker: Speaker) -> None:
    want = np.concatenate(list(tts.stream(MODE_INPUTS["tts_text"], "zero_shot", speaker)))
    got = np.concatenate(list(tts.stream_text(iter(["Hi", ", 你", "好！"]), "zero_shot", speaker)))
    assert max_diff(pcm(got), pcm(want)) == 0.0


def test_seeded_sampling_reproduces(tmp_path: Path) -> None:
    model_dir = tiny_tts_dir(tmp_path / "ras", greedy=False)
    tts = CosyVoice3Tts.from_model_dir(model_dir, sine_samples=SINE_SAMPLES)
    spk = tts.make_speaker(PROMPT_WAV, MODE_INPUTS["prompt_text"])
    runs = [tts.synthesize_segments("你好。", "zero_shot", spk, seed=s)[0].tokens for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_writes_the_golden_wav(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    cmd = [sys.executable, "-m", "utils.cosyvoice3.tts", "--model-dir", str(model_dir),
           "--text", MODE_INPUTS["tts_text"], "--mode", "zero_shot", "--prompt-wav", str(PROMPT_WAV),
           "--prompt-text", MODE_INPUTS["prompt_text"], "--seed", "1", "--threads", "2", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24000
    assert max_diff(pcm(audio), case("e2e_zero_shot")["tts_speech"]) <= WAVE_ATOL
