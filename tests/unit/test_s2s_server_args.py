"""The S2S server's command line: --cuda-graphs and --vocoder-cuda-graphs are refused at start
where they cannot run, before anything loads."""

from __future__ import annotations

import pytest

from web_demo.server.engines import builders
from web_demo.server.engines.builders import build_s2s_engine
from web_demo.server.server import S2SServerConfig, parse_args


def _build(cfg: S2SServerConfig) -> object:
    return build_s2s_engine(cfg.s2s, vocoder=cfg.vocoder, asr=cfg.asr, tts=cfg.tts,
                            responder=cfg.responder, workers=cfg.workers)


def test_the_flags_parse_and_default_off() -> None:
    assert not parse_args([]).s2s.cuda_graphs and not parse_args([]).vocoder.cuda_graphs
    cfg = parse_args(["--cuda-graphs", "--vocoder-cuda-graphs"])
    assert cfg.s2s.cuda_graphs and cfg.vocoder.cuda_graphs


def test_cuda_graphs_on_a_cpu_model_is_refused() -> None:
    cfg = parse_args(["--engine", "funaudiochat", "--s2s-device", "cpu", "--cuda-graphs"])
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device; the S2S model would run on cpu"):
        _build(cfg)


def test_vocoder_cuda_graphs_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "gpu_available", lambda: False)
    cfg = parse_args(["--engine", "funaudiochat", "--s2s-device", "cuda:0", "--vocoder-cuda-graphs"])
    with pytest.raises(ValueError, match="--vocoder-cuda-graphs needs a CUDA device"):
        _build(cfg)


def test_vocoder_cuda_graphs_need_the_cached_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--vocoder-cuda-graphs", "--vocoder-mode", "upstream-fac"])
    assert "--vocoder-cuda-graphs needs --vocoder-mode cached" in capsys.readouterr().err


def test_main_exits_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    from web_demo.server.server import main

    with pytest.raises(SystemExit, match="server: --cuda-graphs needs a CUDA device"):
        main(["--engine", "funaudiochat", "--s2s-device", "cpu", "--cuda-graphs", "--port", "0"])
