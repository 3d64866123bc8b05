"""Per-session streams: offline e2e, the Fun-Audio-Chat and native upstream call
sequences, and the cached mode against the offline chunk-masked computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.cv3_golden import CASES, FLOW_ATOL, SPEECH_ATOL, assert_close, case, manifest
from utils.cosyvoice3 import StreamMode, Token2Wav
from utils.cosyvoice3.hift import HiftState
from utils.cosyvoice3.streaming import FunAudioChatStream


def _run(stream, pushes: list[list[int]]) -> list[np.ndarray]:
    """Push each group, then finalize; return every emitted chunk (empty ones dropped)."""
    chunks = [stream.push(p) for p in pushes] + [stream.finalize()]
    return [c for c in chunks if c.size]


def _record_flow_mels(model: Token2Wav, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    mels: list[torch.Tensor] = []
    inference = model.flow.inference

    def spy(*args, **kwargs):
        mels.append(inference(*args, **kwargs))
        return mels[-1]

    monkeypatch.setattr(model.flow, "inference", spy)
    return mels


def test_e2e_offline(model: Token2Wav, tokens: list[int], embedding: torch.Tensor,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    golden = case("e2e_offline")
    mels = _record_flow_mels(model, monkeypatch)
    speech = model.offline(tokens, embedding=embedding)
    assert speech.dtype == np.float32 and speech.shape == (57600,)
    assert_close(mels[0], golden["flow_mel"], FLOW_ATOL, "e2e flow mel")
    assert_close(speech, golden["speech"], SPEECH_ATOL, "e2e speech")


@pytest.mark.parametrize("push", [1, 60], ids=["one-by-one", "all-at-once"])
def test_stream_funaudiochat(model: Token2Wav, tokens: list[int], embedding: torch.Tensor,
                             monkeypatch: pytest.MonkeyPatch, push: int) -> None:
    golden, calls = case("stream_funaudiochat"), manifest()["stream_funaudiochat_calls"]
    mels = _record_flow_mels(model, monkeypatch)
    stream = model.new_stream("upstream-fac", embedding=embedding)
    chunks = _run(stream, [tokens[i:i + push] for i in range(0, len(tokens), push)])
    if push == 1:  # one call per emitted chunk, in the server's order
        assert [c.shape[0] for c in chunks] == [c["speech_samples"] for c in calls]
        for i, chunk in enumerate(chunks):
            assert_close(chunk, golden[f"call{i}_speech"], SPEECH_ATOL, f"call {i} speech")
    assert stream.calls == [(c["n_tokens_in"], c["token_offset"], c["finalize"]) for c in calls]
    for i, mel in enumerate(mels):
        assert_close(mel, golden[f"call{i}_flow_mel"], FLOW_ATOL, f"call {i} flow mel")
    assert_close(stream.call.cache_mel, golden["final_hift_cache_mel"], FLOW_ATOL, "final hift cache mel")
    assert_close(np.concatenate(chunks), golden["concat_speech"], SPEECH_ATOL, "concatenated speech")
    assert stream.samples_emitted == 57600 and stream.tokens_received == 60


def _fac_server_calls(n_tokens: int, hop: int, look: int, window: int, history: int):
    """The server's sender loop, restated: (calls, index of calls made after each reset)."""
    cur: list[int] = []
    offset = dropped = 0
    calls, resets = [], []
    for token in range(n_tokens):
        cur.append(token)
        if len(cur) < offset + hop + look:
            continue
        calls.append((len(cur), offset, False))
        offset += hop
        if offset >= window:
            offset, cur, dropped = offset - window, cur[window:], dropped + window
            if dropped >= history:
                dropped = 0
                resets.append(len(calls))
    if len(cur) > offset + 1 + look:
        calls.append((len(cur), offset, True))
    return calls, resets


@pytest.mark.parametrize("n_tokens", [95, 97])
def test_funaudiochat_window_and_cache_reset(model: Token2Wav, embedding: torch.Tensor,
                                            n_tokens: int) -> None:
    """Shrunk window (30) and history (60) exercise the server's token window and HiFT reset."""
    stream = model.new_stream("upstream-fac", embedding=embedding)
    assert isinstance(stream, FunAudioChatStream)
    stream.window, stream.history = 30, 60
    rng = np.random.default_rng(0)
    pushed = rng.integers(0, 6561, n_tokens).tolist()
    per_call = []  # (samples emitted by the call, vocoder speech offset right after it)
    for token in pushed:
        before = len(stream.calls)
        pcm = stream.push([token])
        if len(stream.calls) > before:
            per_call.append((pcm.size, stream.call.speech_offset))
    tail = stream.finalize()
    calls, resets = _fac_server_calls(n_tokens, 15, 3, 30, 60)
    assert stream.calls == calls
    # the call after a reset starts a fresh vocoder cache: its offset is just its own output
    first_after = per_call[resets[0]]
    assert resets and first_after[1] == first_after[0] > 0
    assert per_call[resets[0] - 1][1] == 0  # reset applied right after the triggering call
    # 95 tokens leave offset+4 or fewer at the end: the tail is never vocoded, as upstream
    assert (tail.size == 0) == (not calls[-1][2])


def test_stream_native(model: Token2Wav, tokens: list[int], embedding: torch.Tensor,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = manifest()["stream_native_calls"]
    mels = _record_flow_mels(model, monkeypatch)
    stream = model.new_stream(StreamMode.UPSTREAM_NATIVE, embedding=embedding)
    chunks = _run(stream, [[t] for t in tokens])
    assert stream.calls == [(c["n_tokens_in"], c["token_offset"], c["finalize"]) for c in calls]
    assert [c.shape[0] for c in chunks] == [c["speech_samples"] for c in calls]
    # Chunk attention makes the hop calls' new frames equal the chunk-masked offline mel;
    # the final call is full attention over all tokens.
    new_mels = torch.cat([m[:, :, 2 * c["token_offset"]:] for m, c in zip(mels, calls)], dim=2)
    want = torch.cat([case("flow_offline_chunkmask")["mel"][:, :, :100],
                      case("flow_offline")["mel"][:, :, 100:]], 2)
    assert_close(new_mels, want, FLOW_ATOL, "native mel")
    assert_close(stream.call.cache_mel, want, FLOW_ATOL, "native hift cache mel")
    native = CASES / "stream_native.safetensors"
    if native.exists():  # held back from this checkout; compared whenever it is present
        golden = case("stream_native")
        for i, chunk in enumerate(chunks):
            assert_close(chunk, golden[f"call{i}_speech"], SPEECH_ATOL, f"native call {i}")
        assert_close(np.concatenate(chunks), golden["concat_speech"], SPEECH_ATOL, "native concat")


def _cached_reference(model: Token2Wav) -> torch.Tensor:
    return model.hift.step(case("flow_offline_chunkmask")["mel"], HiftState(), finalize=True)


@pytest.mark.parametrize("groups", [[60], [1] * 60, [27, 1, 2, 23, 7]],
                         ids=["all", "one-by-one", "irregular"])
def test_cached_equals_offline_chunk_masked(model: Token2Wav, tokens: list[int], embedding: torch.Tensor,
                                            groups: list[int]) -> None:
    stream = model.new_stream("cached", embedding=embedding)
    pushes, start = [], 0
    for g in groups:
        pushes.append(tokens[start:start + g])
        start += g
    chunks = _run(stream, pushes)
    assert_close(np.concatenate(chunks), _cached_reference(model), SPEECH_ATOL,
                 "cached vs chunk-masked offline")
    assert stream.samples_emitted == 57600


def test_cached_emits_as_soon_as_a_chunk_and_its_lookahead_exist(model: Token2Wav, tokens: list[int],
                                                                 embedding: torch.Tensor) -> None:
    stream = model.new_stream(embedding=embedding)
    assert stream.mode is StreamMode.CACHED
    sizes = [stream.push([t]).size for t in tokens]
    emitted_at = [i + 1 for i, n in enumerate(sizes) if n]
    assert emitted_at == [28, 53]  # 25-token chunk + 3 lookahead tokens
    assert sizes[27] > 480 * 45  # all but the vocoder's few-frame lookahead of chunk 1


def test_cached_cost_per_chunk_is_constant(model: Token2Wav, embedding: torch.Tensor,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk runs the estimator on its own 50 frames only, whatever came before."""
    frames: list[int] = []
    est = model.flow.decoder.estimator
    forward_chunk = est.forward_chunk

    def spy(x, *args):
        frames.append(x.shape[2])
        return forward_chunk(x, *args)

    monkeypatch.setattr(est, "forward_chunk", spy)
    stream = model.new_stream("cached", embedding=embedding)
    rng = np.random.default_rng(1)
    for _ in range(5):
        stream.push(rng.integers(0, 6561, 25).tolist())
    assert frames == [50] * 10 * 4  # 4 chunks ready (the 5th lacks lookahead), 10 ODE steps each
    assert len(stream.finalize()) > 0 and frames[-10:] == [50] * 10


def test_streams_are_independent(model: Token2Wav, tokens: list[int], embedding: torch.Tensor) -> None:
    alone = [np.concatenate(_run(model.new_stream("cached", embedding=e), [tokens]))
             for e in (embedding, -embedding)]
    a, b = model.new_stream("cached", embedding=embedding), model.new_stream("cached", embedding=-embedding)
    out_a, out_b = [], []
    for i in range(0, 60, 10):
        out_a.append(a.push(tokens[i:i + 10]))
        out_b.append(b.push(tokens[i:i + 10]))
    out_a.append(a.finalize())
    out_b.append(b.finalize())
    np.testing.assert_array_equal(np.concatenate(out_a), alone[0])
    np.testing.assert_array_equal(np.concatenate(out_b), alone[1])
    assert np.abs(alone[0] - alone[1]).max() > 1e-2  # the speaker matters


def test_stream_api_errors(model: Token2Wav, embedding: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        model.new_stream("nope", embedding=embedding)
    with pytest.raises(ValueError, match="no speaker embedding"):
        model.new_stream("cached")
    with pytest.raises(ValueError, match="192"):
        model.new_stream("cached", embedding=np.zeros(5, np.float32))
    stream = model.new_stream("cached", embedding=embedding)
    assert stream.finalize().size == 0  # nothing pushed, nothing to say
    with pytest.raises(RuntimeError):
        stream.push([1])
    with pytest.raises(RuntimeError):
        stream.finalize()


def test_left_chunk_limit_matches_limited_chunk_mask(tokens: list[int], embedding: torch.Tensor) -> None:
    """With num_decoding_left_chunks = 1 the cached stream keeps one earlier chunk of keys
    and equals the whole-sequence flow under the same limited chunk mask."""
    from tests.cv3_golden import MODEL_DIR, SINE_SAMPLES

    limited = Token2Wav.from_model_dir(MODEL_DIR, sine_samples=SINE_SAMPLES, left_chunks=1)
    inp = case("inputs")
    mel = limited.flow.inference(inp["speech_token"], inp["empty_prompt_token"], inp["empty_prompt_feat"],
                                 embedding, streaming=True, finalize=True)
    assert (mel - case("flow_offline_chunkmask")["mel"]).abs().max() > 1e-3  # chunk 2 lost chunk 0
    assert_close(mel[:, :, :100], case("flow_offline_chunkmask")["mel"][:, :, :100], FLOW_ATOL,
                 "first two chunks")
    stream = limited.new_stream("cached", embedding=embedding)
    audio = np.concatenate(_run(stream, [tokens]))
    want = limited.hift.step(mel, HiftState(), finalize=True)
    assert_close(audio, want, SPEECH_ATOL, "cached with one left chunk")
    # the last chunk attended to chunk 1 and its own 20 frames; chunk 0 was dropped
    assert all(layer.visible == 70 for step in stream.caches for layer in step.layers)
