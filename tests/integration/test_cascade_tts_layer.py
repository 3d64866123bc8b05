"""The S2S cascade speaking through the TTS layer: a remote TTS (--tts-url: our own TTS
service's app, espeak-ng behind it) and our CosyVoice3 runtime in a worker (--tts-model-path)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from aiohttp.test_utils import TestServer

from tests.cosyvoice3_tts_tiny import tiny_tts_dir
from tests.fakes import FAST, FakeAsr, wait_until
from tests.tts_golden import PROMPT_WAV
from utils.cosyvoice3.speakers import save_speaker
from utils.cosyvoice3.synthesizer import CosyVoice3Tts
from web_demo.server.app import LIFECYCLE, METRICS, make_app
from web_demo.server.config import HttpConfig, TtsConfig, TtsServiceConfig
from web_demo.server.engines.base import AudioDelta, ReplyRequest
from web_demo.server.engines.builders import build_tts_engine, describe_s2s_choice
from web_demo.server.engines.cascade import CascadeEngine
from web_demo.server.engines.responder import EchoResponder
from web_demo.server.engines.tts_service import build_tts_service_engine

TURN = ReplyRequest(turn_index=0, system_prompt=None, user_audio_16k=np.zeros(16000, np.float32))


async def reply_audio_s(engine: CascadeEngine) -> float:
    await engine.start()
    try:
        conversation = engine.open_session("s", history_turns=2)
        pcm = [e.pcm_24k async for e in conversation.reply(TURN) if isinstance(e, AudioDelta)]
        return sum(len(p) for p in pcm) / 24000
    finally:
        await engine.aclose()


async def test_cascade_speaks_through_a_remote_tts_service() -> None:
    tts_cfg = TtsServiceConfig(engine="espeak-ng")
    app = make_app(HttpConfig(log_level="WARNING"), tts=build_tts_service_engine(tts_cfg, FAST),
                   tts_config=tts_cfg)
    async with TestServer(app) as server:
        await wait_until(lambda: app[LIFECYCLE].started.is_set(), timeout=60)
        cfg = TtsConfig(url=str(server.make_url("")), voice="alloy")
        assert "TTS at http://" in describe_s2s_choice_line(cfg)
        engine = CascadeEngine(asr=FakeAsr(), responder=EchoResponder(), tts=build_tts_engine(cfg, FAST))
        seconds = await reply_audio_s(engine)
        # the echo of FakeAsr's three sentences, spoken by espeak-ng behind the TTS service
        assert seconds > 2.0
        served = app[METRICS].tts_audio.labels("espeak-ng")._value.get()
        assert abs(served - seconds) < 0.05


async def test_cascade_speaks_with_cosyvoice3(tmp_path) -> None:
    model = tiny_tts_dir(tmp_path / "cv3", greedy=True)
    speaker = tmp_path / "voice.safetensors"  # --tts-voice may name a saved speaker file
    tts = CosyVoice3Tts.from_model_dir(model)
    save_speaker(speaker, tts.make_speaker(PROMPT_WAV, "希望你以后能够做的比我还好呦。"))
    cfg = TtsConfig(model_path=model, voice=str(speaker))
    assert "CosyVoice3 from" in describe_s2s_choice_line(cfg)
    # loading CosyVoice3 (torch, the ONNX front end) in a fresh process takes ~10 s on a quiet
    # 2-core machine, and more on a busy one
    worker = build_tts_engine(cfg, replace(FAST, ready_timeout_s=120))
    engine = CascadeEngine(asr=FakeAsr(), responder=EchoResponder(), tts=worker)
    assert await reply_audio_s(engine) > 1.0
    assert worker.health()["engine"] == "cosyvoice3"


def describe_s2s_choice_line(tts: TtsConfig) -> str:
    from web_demo.server.config import AsrConfig, ResponderConfig, S2SConfig

    return describe_s2s_choice(S2SConfig(engine="cascade"), ResponderConfig(), AsrConfig(), tts)
