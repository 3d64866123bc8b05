"""Chooses and builds the S2S engine named by --engine."""

from __future__ import annotations

import os

from web_demo.server.config import ServerConfig
from web_demo.server.devices import gpu_available
from web_demo.server.engines.base import S2SEngine


def weights_present(cfg: ServerConfig) -> bool:
    return (cfg.model_path / "config.json").is_file()


def resolve_engine(cfg: ServerConfig) -> str:
    if cfg.engine != "auto":
        return cfg.engine
    return "funaudiochat" if weights_present(cfg) and gpu_available() else "cascade"


def describe_choice(cfg: ServerConfig) -> str:
    name = resolve_engine(cfg)
    if name == "funaudiochat":
        return f"funaudiochat (REAL MODEL from {cfg.model_path})"
    why = ""
    if cfg.engine == "auto":
        why = (f" -- no weights at {cfg.model_path}" if not weights_present(cfg)
               else " -- no GPU visible")
    if name == "cascade":
        return ("cascade: CPU STAND-IN ENGINES (faster-whisper -> "
                f"{'LLM at ' + cfg.llm_url if cfg.llm_url else 'echo'} -> espeak-ng), "
                f"NOT Fun-Audio-Chat{why}")
    return f"{name} (diagnostic engine, NOT Fun-Audio-Chat)"


def build_s2s_engine(cfg: ServerConfig) -> S2SEngine:
    name = resolve_engine(cfg)
    if name == "loopback":
        from web_demo.server.engines.loopback import LoopbackEngine

        return LoopbackEngine()
    if name == "cascade":
        return _build_cascade(cfg)
    return _build_funaudiochat(cfg)


def _build_funaudiochat(cfg: ServerConfig) -> S2SEngine:
    from web_demo.server.engines.funaudiochat import FunAudioChatEngine
    from web_demo.server.engines.local import WorkerVocoder

    gpu = gpu_available()
    s2s_device = cfg.s2s_device if cfg.s2s_device != "auto" else ("cuda:0" if gpu else "cpu")
    vocoder = WorkerVocoder(cfg=cfg.workers, init_kwargs={
        "model_dir": str(cfg.tts_model_path), "device": f"cuda:{cfg.tts_gpu}" if gpu else "cpu",
        "dtype": cfg.tts_dtype, "mode": cfg.tts_mode,
        "speaker_embedding": str(cfg.tts_speaker_embedding) if cfg.tts_speaker_embedding else None})
    return FunAudioChatEngine(
        model_path=cfg.model_path, tokenizer_path=cfg.tokenizer_path, device=s2s_device,
        vocoder=vocoder, history_turns=cfg.session.history_turns, max_batch=cfg.max_batch)


def _build_cascade(cfg: ServerConfig) -> S2SEngine:
    from web_demo.server.engines.cascade import CascadeEngine
    from web_demo.server.engines.local import WorkerAsrEngine, WorkerTtsEngine
    from web_demo.server.engines.responder import EchoResponder, OpenAIChatResponder, Responder

    responder: Responder = EchoResponder()
    if cfg.llm_url:
        responder = OpenAIChatResponder(base_url=cfg.llm_url, model=cfg.llm_model,
                                        api_key=cfg.llm_api_key or os.environ.get("LLM_API_KEY"))
    return CascadeEngine(
        asr=WorkerAsrEngine(init_kwargs={"model_dir": cfg.asr_model, "device": cfg.asr_device},
                            cfg=cfg.workers),
        responder=responder,
        tts=WorkerTtsEngine(init_kwargs={"voice": cfg.tts_voice}, cfg=cfg.workers),
        language=cfg.asr_language)
