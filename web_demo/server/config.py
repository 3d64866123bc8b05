"""Frozen configuration objects built from command-line flags (see each server's main)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant. Answer briefly and naturally."
CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"


@dataclass(frozen=True)
class SessionConfig:
    """Per-connection behaviour of /api/chat."""
    history_turns: int = 8  # finished turns kept as context; older ones are dropped
    ping_interval_s: float = 10.0  # a 0x06 frame after this long with nothing sent
    max_turn_s: float = 60.0  # user audio beyond this is dropped with a 0x05 frame
    send_ahead_s: float = 0.5  # reply audio may run this far ahead of real time
    default_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    save_audio: bool = False
    output_dir: Path = Path("output")


@dataclass(frozen=True)
class WorkerConfig:
    ready_timeout_s: float = 300.0  # model loading on a cold disk can be slow
    close_timeout_s: float = 5.0
    restart_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8002
    engine: str = "auto"  # auto | funaudiochat | cascade | loopback
    model_path: Path = Path("pretrained_models/Fun-Audio-Chat-8B")
    tokenizer_path: Path | None = None
    tts_model_path: Path = Path("pretrained_models/Fun-CosyVoice3-0.5B-2512")
    tts_gpu: int = 0
    tts_dtype: str = "float32"  # float16/bfloat16 halve the vocoder's GPU time and memory
    tts_mode: str = "cached"  # cached | upstream-fac | upstream-native
    tts_speaker_embedding: Path | None = None  # .npy [192]; default: spk2info in the model dir
    s2s_device: str = "auto"  # auto = cuda:0 with a GPU, else cpu
    max_batch: int = 32  # sessions decoded together in one step
    asr_device: str = "auto"  # auto | cpu | cuda | cuda:N
    asr_model: str | None = None  # CTranslate2 Whisper directory for the cascade engine
    asr_language: str | None = None
    tts_voice: str = "en-us"  # espeak-ng voice for the cascade engine
    llm_url: str | None = None  # OpenAI-compatible base URL, e.g. http://host:8000/v1
    llm_model: str | None = None
    llm_api_key: str | None = None
    api_key: str | None = None  # when set, /api/chat needs it (Bearer header or ?api_key=)
    max_sessions: int = 64
    max_frame_bytes: int = 256 * 1024  # larger WebSocket frames close the socket (1009)
    session: SessionConfig = field(default_factory=SessionConfig)
    workers: WorkerConfig = field(default_factory=WorkerConfig)
    static_dir: Path = CLIENT_DIR
