"""Builds engines from their component configs; shared by every service's entrypoint.

Heavy imports (torch, model code) happen inside the builders that need them, so a service
pays only for the engines it runs.
"""

from __future__ import annotations

from web_demo.server.config import (
    AsrConfig,
    ResponderConfig,
    S2SConfig,
    TtsConfig,
    VocoderConfig,
    WorkerConfig,
)
from web_demo.server.devices import gpu_available
from web_demo.server.engines.base import AsrEngine, S2SEngine, TtsEngine, Vocoder
from web_demo.server.engines.responder import EchoResponder, OpenAIChatResponder, Responder


def weights_present(cfg: S2SConfig) -> bool:
    return (cfg.model_path / "config.json").is_file()


def resolve_s2s_engine(cfg: S2SConfig) -> str:
    if cfg.engine != "auto":
        return cfg.engine
    return "funaudiochat" if weights_present(cfg) and gpu_available() else "cascade"


def describe_s2s_choice(cfg: S2SConfig, responder: ResponderConfig, asr: AsrConfig,
                        tts: TtsConfig) -> str:
    """One loud line saying whether the real model runs, or which stand-in and why."""
    name = resolve_s2s_engine(cfg)
    if name == "funaudiochat":
        return f"funaudiochat (REAL MODEL from {cfg.model_path})"
    why = ""
    if cfg.engine == "auto":
        why = (f" -- no weights at {cfg.model_path}" if not weights_present(cfg)
               else " -- no GPU visible")
    if name == "cascade":
        brain = f"LLM at {responder.llm_url}" if responder.llm_url else "echo"
        ears = f"ASR at {asr.url}" if asr.url else "faster-whisper"
        voice = (f"TTS at {tts.url}" if tts.url else
                 f"CosyVoice3 from {tts.model_path}" if tts.model_path else "espeak-ng")
        return (f"cascade: CPU STAND-IN ENGINES ({ears} -> {brain} -> {voice}), "
                f"NOT Fun-Audio-Chat{why}")
    return f"{name} (diagnostic engine, NOT Fun-Audio-Chat)"


def build_s2s_engine(cfg: S2SConfig, *, vocoder: VocoderConfig, asr: AsrConfig, tts: TtsConfig,
                     responder: ResponderConfig, workers: WorkerConfig) -> S2SEngine:
    name = resolve_s2s_engine(cfg)
    if name == "loopback":
        from web_demo.server.engines.loopback import LoopbackEngine

        return LoopbackEngine()
    if name == "cascade":
        from web_demo.server.engines.cascade import CascadeEngine

        return CascadeEngine(asr=build_asr_engine(asr, workers), responder=build_responder(responder),
                             tts=build_tts_engine(tts, workers), language=asr.language)
    from web_demo.server.engines.funaudiochat import FunAudioChatEngine

    device = cfg.device if cfg.device != "auto" else ("cuda:0" if gpu_available() else "cpu")
    if cfg.cuda_graphs and not device.startswith("cuda"):
        raise ValueError(f"--cuda-graphs needs a CUDA device; the S2S model would run on {device}")
    return FunAudioChatEngine(model_path=cfg.model_path, tokenizer_path=cfg.tokenizer_path,
                              device=device, vocoder=build_vocoder(vocoder, workers, streams=cfg.max_batch),
                              max_batch=cfg.max_batch, cuda_graphs=cfg.cuda_graphs,
                              transcriber=build_asr_engine(asr, workers) if asr.user_transcripts else None,
                              transcript_language=asr.language)


def build_vocoder(cfg: VocoderConfig, workers: WorkerConfig, *, streams: int) -> Vocoder:
    """`streams`: the S2S decode batch, whose replies the vocoder batches (and holds static
    slots for) together."""
    from web_demo.server.engines.local import WorkerVocoder

    gpu = gpu_available()
    if cfg.cuda_graphs and not gpu:
        raise ValueError("--vocoder-cuda-graphs needs a CUDA device; none is visible")
    return WorkerVocoder(cfg=workers, init_kwargs={
        "model_dir": str(cfg.model_path),
        "device": f"cuda:{cfg.gpu}" if gpu else "cpu",
        "dtype": cfg.dtype, "mode": cfg.mode, "static_shapes": cfg.cuda_graphs,
        "max_stream_batch": streams,
        "speaker_embedding": str(cfg.speaker_embedding) if cfg.speaker_embedding else None})


def build_asr_engine(cfg: AsrConfig, workers: WorkerConfig) -> AsrEngine:
    """The S2S server's ASR: a remote transcription server (--asr-url), else a local worker."""
    if cfg.url:
        from web_demo.server.engines.remote_asr import OpenAITranscriptionsEngine

        return OpenAITranscriptionsEngine(name="asr", base_url=cfg.url, model=cfg.remote_model,
                                          api_key=cfg.api_key)
    from web_demo.server.engines.local import WorkerAsrEngine

    return WorkerAsrEngine(init_kwargs={"model_dir": cfg.model, "device": cfg.device}, cfg=workers)


def build_tts_engine(cfg: TtsConfig, workers: WorkerConfig) -> TtsEngine:
    """The cascade's TTS: remote (--tts-url), CosyVoice3 (--tts-model-path) or espeak-ng."""
    if cfg.url:
        from web_demo.server.engines.remote_tts import OpenAISpeechEngine

        return OpenAISpeechEngine(cfg.url, cfg.remote_model, api_key=cfg.api_key, voice=cfg.voice, name="tts")
    from web_demo.server.engines.local import WorkerTtsEngine

    if cfg.model_path is not None:
        from web_demo.server.engines.tts_service import TTS_HANDLERS

        return WorkerTtsEngine(handler=TTS_HANDLERS["cosyvoice3"], cfg=workers, init_kwargs={
            "model_dir": str(cfg.model_path), "default_speaker": cfg.voice})
    return WorkerTtsEngine(init_kwargs={"voice": cfg.voice}, cfg=workers)


def build_responder(cfg: ResponderConfig) -> Responder:
    if not cfg.llm_url:
        return EchoResponder()
    return OpenAIChatResponder(base_url=cfg.llm_url, model=cfg.llm_model, api_key=cfg.llm_api_key)
