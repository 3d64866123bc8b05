"""The TTS model registry: tts_models.json -> one validated spec per served model.

The same shape as the ASR service's models.json (asr_registry.py): `{"models": {id: {...}}}`
with each entry's `name`, `engine`, `description`, `default`, `models.offline`, `fallbacks`
and `extra_kwargs` (`vllm_host`, `vllm_port`, `vllm_tls`, `model`, `voice`, `api_key_env`,
`timeout_s`, `voice_cloning`); see tts_models.example.json. Engines: `cosyvoice3` (our
runtime in a local worker; models.offline is its directory), `espeak-ng` (the local CPU
stand-in, no directory) and `openai-speech` (any OpenAI-compatible /v1/audio/speech server,
always remote).

Where an entry runs follows the ASR plan's switch: a host makes it remote, spoken to as
`openai-speech` at http://host:port; no host makes it embedded. The host comes from
`TTS_VLLM_HOST_<ID>` (port: `TTS_VLLM_PORT_<ID>`), else from `extra_kwargs`. <ID> is the model
id upper-cased with every other character as `_`, and a `_`-separated tail of two parts or
more counts too, as for the ASR service's QWEN3_VLLM_HOST_<ID>.

Pure apart from reading the file and looking for an embedded CosyVoice3 directory (a wrong
path fails at start-up, not when a worker loads it); no engine is built here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from web_demo.server.engines.asr_registry import DEFAULT_VLLM_PORT, RegistryError
from web_demo.server.engines.tts_service import cosyvoice3_present

LocalTtsEngine = Literal["cosyvoice3", "espeak-ng"]
TTS_ENGINES = ("cosyvoice3", "espeak-ng", "openai-speech")
HOST_ENV, PORT_ENV = "TTS_VLLM_HOST_", "TTS_VLLM_PORT_"
DEFAULT_TIMEOUT_S = 60.0  # OpenAISpeechEngine's: the wait for an answer and every gap in it
_ENTRY_KEYS = {"name", "engine", "description", "default", "models", "extra_kwargs", "fallbacks"}
_EXTRA_KEYS = {"vllm_host", "vllm_port", "vllm_tls", "model", "voice", "api_key_env", "timeout_s",
               "voice_cloning"}

__all__ = ["RegistryError", "TtsModelSpec", "TtsRegistry", "TtsRemoteTarget", "load_tts_registry"]


@dataclass(frozen=True)
class TtsRemoteTarget:
    """An OpenAI-compatible /v1/audio/speech server (vLLM-Omni, our TTS service, OpenAI)."""
    base_url: str  # http://host:port
    model: str  # the name the remote serves it under
    api_key_env: str | None = None  # the variable holding its key (keys never sit in the file)
    timeout_s: float = DEFAULT_TIMEOUT_S
    voice_cloning: bool = False  # send a request's prompt as vLLM-Omni's ref_audio / ref_text
    api: Literal["openai-speech"] = "openai-speech"


@dataclass(frozen=True)
class TtsModelSpec:
    id: str
    name: str
    engine: str  # as written in the file
    description: str = ""
    default: bool = False
    offline: str | None = None  # embedded cosyvoice3: its directory; remote: its model name
    voice: str | None = None  # for requests that name none (speaker id, espeak-ng or remote voice)
    remote: TtsRemoteTarget | None = None  # None: embedded, in a local worker
    fallbacks: tuple[str, ...] = ()  # ids tried in order when this one is unavailable

    @property
    def local_engine(self) -> LocalTtsEngine:
        if self.engine == "cosyvoice3":
            return "cosyvoice3"
        if self.engine == "espeak-ng":
            return "espeak-ng"
        raise ValueError(f"model {self.id!r} ({self.engine}) has no local engine")


@dataclass(frozen=True)
class TtsRegistry:
    models: dict[str, TtsModelSpec]
    default: str
    source: str  # the file, for messages

    def describe(self) -> list[str]:
        """One line per model: where it runs, what it falls back to."""
        lines = []
        for spec in self.models.values():
            where = (f"remote {spec.remote.api} at {spec.remote.base_url} (model {spec.remote.model})"
                     if spec.remote else f"embedded {spec.local_engine} ({spec.offline or 'no directory'})")
            extra = f", falls back to {', '.join(spec.fallbacks)}" if spec.fallbacks else ""
            mark = " [default]" if spec.id == self.default else ""
            lines.append(f"{spec.id}{mark}: {where}{extra}")
        return lines


def load_tts_registry(path: Path, *, default: str | None = None,
                      env: Mapping[str, str] = os.environ) -> TtsRegistry:
    """Reads and validates the file; `default` (--default-model) beats the file's flag."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"cannot read --models {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"--models {path} is not valid JSON: {exc}") from exc
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f'--models {path}: expected {{"models": {{"<id>": {{...}}, ...}}}}')
    models = {model_id: _spec(model_id, entry, env, where=f"{path}: model {model_id!r}")
              for model_id, entry in entries.items()}
    for spec in models.values():
        for other in spec.fallbacks:
            if other == spec.id:
                raise RegistryError(f"{path}: model {spec.id!r} falls back to itself")
            if other not in models:
                raise RegistryError(f"{path}: model {spec.id!r} falls back to {other!r}, which is "
                                    f"not in the file")
    return TtsRegistry(models=models, default=_default(models, default, path), source=str(path))


def _spec(model_id: str, entry: Any, env: Mapping[str, str], *, where: str) -> TtsModelSpec:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", model_id):
        raise RegistryError(f"{where}: ids are 1-100 letters, digits and . _ : -")
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: an entry is a JSON object")
    _known(entry, _ENTRY_KEYS, where, "")
    engine = _string(entry, "engine", where, required=True)
    if engine not in TTS_ENGINES:
        raise RegistryError(f"{where}: engine {engine!r} is not one of {', '.join(TTS_ENGINES)}")
    offline = _offline(entry.get("models"), where)
    extra = entry.get("extra_kwargs") or {}
    if not isinstance(extra, dict):
        raise RegistryError(f"{where}: extra_kwargs is a JSON object")
    _known(extra, _EXTRA_KEYS, where, "extra_kwargs.")
    fallbacks = entry.get("fallbacks") or []
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
        raise RegistryError(f"{where}: fallbacks is a list of model ids")
    remote = _remote(model_id, offline, extra, env, where)
    if remote is None:
        _check_embedded(engine, offline, where)
    return TtsModelSpec(
        id=model_id, name=_string(entry, "name", where) or model_id, engine=engine,
        description=_string(entry, "description", where), default=_flag(entry, "default", where),
        offline=offline, voice=_string(extra, "voice", where, prefix="extra_kwargs.") or None,
        remote=remote, fallbacks=tuple(fallbacks))


def _remote(model_id: str, offline: str | None, extra: dict[str, Any], env: Mapping[str, str],
            where: str) -> TtsRemoteTarget | None:
    key = re.sub(r"[^A-Z0-9]", "_", model_id.upper())
    host = _per_model(env, HOST_ENV, key) or _string(extra, "vllm_host", where, prefix="extra_kwargs.")
    # Checked whether or not a host is set, so a typo fails before the day the host appears.
    port_text: object = _per_model(env, PORT_ENV, key)
    if port_text is None:
        port_text = extra.get("vllm_port")
    if port_text is None:
        port_text = DEFAULT_VLLM_PORT
    if isinstance(port_text, bool) or not isinstance(port_text, int | str):
        raise RegistryError(f"{where}: vllm_port {port_text!r} is not a port number")
    try:
        port = int(port_text)
    except ValueError:
        raise RegistryError(f"{where}: vllm_port {port_text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise RegistryError(f"{where}: vllm_port {port} is out of range")
    timeout = extra.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise RegistryError(f"{where}: extra_kwargs.timeout_s must be 0..3600 seconds")
    tls = _flag(extra, "vllm_tls", where, prefix="extra_kwargs.")
    cloning = _flag(extra, "voice_cloning", where, prefix="extra_kwargs.")
    api_key_env = _string(extra, "api_key_env", where, prefix="extra_kwargs.") or None
    served = _string(extra, "model", where, prefix="extra_kwargs.")
    if not host.strip():
        return None
    return TtsRemoteTarget(base_url=f"{'https' if tls else 'http'}://{host.strip()}:{port}",
                           model=served or offline or model_id, api_key_env=api_key_env,
                           timeout_s=float(timeout), voice_cloning=cloning)


def _check_embedded(engine: str, offline: str | None, where: str) -> None:
    if engine == "openai-speech":
        raise RegistryError(f"{where}: engine 'openai-speech' runs only behind a server: set "
                            "extra_kwargs.vllm_host (or TTS_VLLM_HOST_<ID>)")
    if engine == "espeak-ng" and offline is not None:
        raise RegistryError(f"{where}: embedded espeak-ng takes no models.offline (its voice is "
                            "extra_kwargs.voice)")
    if engine == "cosyvoice3" and (offline is None or not cosyvoice3_present(Path(offline))):
        raise RegistryError(f"{where}: models.offline {offline!r} is not a CosyVoice3 directory "
                            "(cosyvoice3.yaml or llm_config.json); give it a vllm_host to use a "
                            "remote server instead")


def _per_model(env: Mapping[str, str], prefix: str, key: str) -> str | None:
    """`prefix + key`, else the longest `_`-separated tail of key (two parts at least, so that
    TTS_VLLM_HOST_B never matches every "-b" model) that is set."""
    parts = key.split("_")
    tails = ("_".join(parts[start:]) for start in range(max(1, len(parts) - 1)))
    return next((env[prefix + tail] for tail in tails if env.get(prefix + tail)), None)


def _default(models: dict[str, TtsModelSpec], asked: str | None, path: Path) -> str:
    if asked is not None:
        if asked not in models:
            raise RegistryError(f"--default-model {asked!r} is not in {path} (models: {', '.join(models)})")
        return asked
    marked = [spec.id for spec in models.values() if spec.default]
    if len(marked) > 1:
        raise RegistryError(f"{path}: more than one default model ({', '.join(marked)})")
    return marked[0] if marked else next(iter(models))


def _offline(models: Any, where: str) -> str | None:
    if models is None:
        return None
    if not isinstance(models, dict) or set(models) - {"offline"} or not isinstance(
            models.get("offline", ""), str):
        raise RegistryError(f'{where}: "models" is {{"offline": "<directory or model name>"}}')
    return models.get("offline") or None


def _known(fields: dict[str, Any], known: set[str], where: str, prefix: str) -> None:
    unknown = set(fields) - known
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(prefix + u for u in sorted(unknown))}; "
                            f"fields: {', '.join(prefix + k for k in sorted(known))}")


def _string(fields: dict[str, Any], name: str, where: str, *, required: bool = False,
            prefix: str = "") -> str:
    value = fields.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise RegistryError(f"{where}: {prefix}{name} is {'a required' if required else 'a'} string")
    return value


def _flag(fields: dict[str, Any], name: str, where: str, *, prefix: str = "") -> bool:
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise RegistryError(f"{where}: {prefix}{name} is true or false")
    return value
