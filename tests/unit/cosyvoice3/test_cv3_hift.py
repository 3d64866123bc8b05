"""HiFT vocoder parity: f0 predictor, NSF source, offline and upstream-style streaming
calls, and the stateful step() against the whole-utterance call."""

from __future__ import annotations

import pytest
import torch

from tests.cv3_golden import F0_ATOL, SOURCE_ATOL, SPEECH_ATOL, STFT_ATOL, assert_close, case, manifest
from utils.cosyvoice3 import Token2Wav
from utils.cosyvoice3.hift import HiftState


@pytest.mark.parametrize("finalize,key", [(True, "f0_finalize"), (False, "f0_nonfinal")])
def test_f0_predictor(model: Token2Wav, finalize: bool, key: str) -> None:
    d = case("f0_source_unit")
    f0 = model.hift.f0_predictor(d["mel"], {}, finalize)
    assert_close(f0, d[key], F0_ATOL, key)


def test_source_on_designed_f0(model: Token2Wav) -> None:
    d = case("f0_source_unit")
    src = model.hift.m_source
    samples = d["sine_merge"].shape[1]
    phase = torch.zeros(1, 9, dtype=torch.float64)
    excitation, _ = src(d["f0_design"], phase, model.hift.sine_noise[:, :samples])
    assert_close(src.merge(excitation), d["sine_merge"], SOURCE_ATOL, "sine_merge")
    # split in two at a frame boundary: the running phase carries over exactly
    first, phase = src(d["f0_design"][:, :10], torch.zeros(1, 9, dtype=torch.float64),
                       model.hift.sine_noise[:, :4800])
    second, _ = src(d["f0_design"][:, 10:], phase, model.hift.sine_noise[:, 4800:samples])
    assert torch.equal(torch.cat([first, second], dim=1), excitation)


def test_hift_offline(model: Token2Wav) -> None:
    d = case("hift_offline")
    taps: dict = {}
    speech = model.hift.step(d["mel"], HiftState(), finalize=True, taps=taps)
    assert_close(speech, d["speech"], SPEECH_ATOL, "speech")
    assert_close(taps["f0"], d["f0"], F0_ATOL, "f0")
    assert_close(taps["source"], d["source"], SOURCE_ATOL, "source")
    assert_close(taps["source_stft"], d["source_stft"], STFT_ATOL, "source_stft")
    assert_close(taps["conv_pre_out"], d["conv_pre_out"], STFT_ATOL, "conv_pre_out")
    assert_close(taps["conv_post_out"], d["conv_post_out"], STFT_ATOL, "conv_post_out")


def test_hift_nonfinal(model: Token2Wav) -> None:
    d = case("hift_offline")
    speech = model.hift.upstream_inference(d["nonfinal_mel"], finalize=False)
    assert_close(speech, d["nonfinal_speech"], SPEECH_ATOL, "nonfinal speech")
    taps: dict = {}
    model.hift.step(d["nonfinal_mel"], HiftState(), finalize=False, taps=taps)
    assert_close(taps["f0"], d["nonfinal_f0"], F0_ATOL, "nonfinal f0")
    assert_close(taps["source"], d["nonfinal_source"], SOURCE_ATOL, "nonfinal source")
    # the stateful step runs further ahead than upstream; its prefix must agree
    for key in ("source_stft", "conv_post_out"):
        want = d[f"nonfinal_{key}"]
        assert taps[key].shape[2] >= want.shape[2]
        assert_close(taps[key][:, :, : want.shape[2]], want, STFT_ATOL, f"nonfinal {key}")


def test_hift_stream_calls(model: Token2Wav) -> None:
    """Upstream's re-run-everything calls on growing prefixes, emitting only new samples."""
    mel, d = case("hift_offline")["mel"], case("hift_stream")
    offset, chunks = 0, []
    for i, call in enumerate(manifest()["hift_stream_calls"]):
        full = model.hift.upstream_inference(mel[:, :, : call["mel_frames_in"]], finalize=call["finalize"])
        assert full.shape[0] == call["full_output_len"] and offset == call["speech_offset_before"]
        chunk = full[offset:]
        offset += chunk.shape[0]
        assert_close(chunk, d[f"call{i}_speech"], SPEECH_ATOL, f"call {i}")
        chunks.append(chunk)
    assert_close(torch.cat(chunks), d["concat_speech"], SPEECH_ATOL, "concat")


@pytest.mark.parametrize("cuts", [[1, 2, 3, 60], [7, 30, 31, 77], [119], [30, 60, 90]])
def test_stateful_steps_equal_offline(model: Token2Wav, cuts: list[int]) -> None:
    mel, want = case("hift_offline")["mel"], case("hift_offline")["speech"]
    state, chunks, start = HiftState(), [], 0
    for end in [*cuts, mel.shape[2]]:
        chunks.append(model.hift.step(mel[:, :, start:end], state, finalize=end == mel.shape[2]))
        start = end
    # nothing is emitted before it is final: a non-final step emits at most up to its f0 lookahead
    assert sum(c.shape[0] for c in chunks[:-1]) <= 480 * (cuts[-1] - 3)
    assert_close(torch.cat(chunks), want, SPEECH_ATOL, f"steps at {cuts}")
    with pytest.raises(AssertionError, match="finalized"):
        model.hift.step(mel[:, :, :1], state, finalize=True)


def test_first_steps_too_short_to_emit(model: Token2Wav) -> None:
    state = HiftState()
    mel = case("hift_offline")["mel"]
    assert model.hift.step(mel[:, :, :2], state, finalize=False).shape == (0,)
    assert model.hift.step(mel[:, :, :0], HiftState(), finalize=True).shape == (0,)
