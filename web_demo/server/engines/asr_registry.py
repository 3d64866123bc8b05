"""The ASR model registry: models.json -> one validated spec per served model.

The file follows the vLLM ASR plan (seed 000): `{"models": {id: {...}}}` with each entry's
`name`, `engine`, `description`, `languages`, `default`, `supports_realtime`,
`models.offline` and `extra_kwargs.vllm_host` / `vllm_port`; this project adds `fallbacks`
and a few `extra_kwargs` (see models.example.json and the README). Where an entry runs is
decided here, before anything loads, following the plan's switch: a vLLM host makes the
model remote (its OpenAI-compatible HTTP API), no host makes it embedded (a local worker).

Hosts come, first match wins, from the per-model environment variable
`QWEN3_VLLM_HOST_<ID>` (ports: `QWEN3_VLLM_PORT_<ID>`), then the entry's `extra_kwargs`,
then `QWEN3_VLLM_HOST` / `QWEN3_VLLM_PORT` for qwen3 models. <ID> is the model id upper-cased
with every other character as `_` (qwen3-asr-0.6b -> QWEN3_ASR_0_6B); a variable naming a
`_`-separated tail of it counts too (QWEN3_VLLM_HOST_0_6B, as the plan's compose file has).
The per-model variables apply to every engine (a funasr or whisper model becomes remote too);
the global pair only to qwen3 models, as in the plan.
Pure apart from reading the file: no engine is built here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from web_demo.server.languages import ISO_CODES

RemoteApi = Literal["openai-transcriptions", "qwen3-chat"]
LocalEngine = Literal["funasr", "faster-whisper"]
DEFAULT_VLLM_PORT = 8000
_QWEN3 = ("qwen3", "qwen3-chat")
# engine as written in models.json -> the HTTP API it speaks when a host is configured
_REMOTE_API: dict[str, RemoteApi] = {
    "qwen3": "qwen3-chat", "qwen3-chat": "qwen3-chat",
    "openai-transcriptions": "openai-transcriptions",
    # vLLM serves Fun-ASR-Nano (its -vllm checkpoint) and Whisper on /v1/audio/transcriptions
    "funasr": "openai-transcriptions", "faster-whisper": "openai-transcriptions",
    "whisper": "openai-transcriptions",
}
_LOCAL: dict[str, LocalEngine] = {"funasr": "funasr", "faster-whisper": "faster-whisper",
                                  "whisper": "faster-whisper"}
ENGINES = tuple(_REMOTE_API)
_ENTRY_KEYS = {"name", "engine", "description", "languages", "default", "supports_realtime",
               "models", "extra_kwargs", "fallbacks"}


class RegistryError(ValueError):
    """models.json is unreadable or wrong; the message names the file and the entry."""


@dataclass(frozen=True)
class RemoteTarget:
    api: RemoteApi
    base_url: str  # http://host:port
    model: str  # the name the remote serves it under
    api_key_env: str | None = None  # the variable holding its key (keys never sit in the file)
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    engine: str  # as written in the file
    description: str = ""
    languages: tuple[str, ...] = ()  # ISO codes; empty = whatever the engine takes
    default: bool = False
    supports_realtime: bool = False
    offline: str | None = None  # a local model directory (or stand-in name), or the remote's model name
    remote: RemoteTarget | None = None  # None: embedded, in a local worker
    fallbacks: tuple[str, ...] = ()  # ids tried in order when this one is unavailable

    @property
    def local_engine(self) -> LocalEngine:
        return _LOCAL[self.engine]


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    default: str
    source: str  # the file, for messages

    def describe(self) -> list[str]:
        """One line per model: where it runs, what it falls back to."""
        lines = []
        for spec in self.models.values():
            where = (f"remote {spec.remote.api} at {spec.remote.base_url} (model {spec.remote.model})"
                     if spec.remote else f"embedded {spec.local_engine} ({spec.offline or 'stand-in'})")
            extra = f", falls back to {', '.join(spec.fallbacks)}" if spec.fallbacks else ""
            mark = " [default]" if spec.id == self.default else ""
            lines.append(f"{spec.id}{mark}: {where}{extra}")
        return lines


def load_registry(path: Path, *, default: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Registry:
    """Reads and validates models.json; `default` (--default-model) beats the file's flag."""
    env = os.environ if environ is None else environ
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"cannot read --models {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"--models {path} is not valid JSON: {exc}") from exc
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f'--models {path}: expected {{"models": {{"<id>": {{...}}, ...}}}}')
    models = {model_id: _spec(str(model_id), entry, env, where=f"{path}: model {model_id!r}")
              for model_id, entry in entries.items()}
    _check_fallbacks(models, path)
    return Registry(models=models, default=_pick_default(models, default, path), source=str(path))


def _spec(model_id: str, entry: Any, env: Mapping[str, str], *, where: str) -> ModelSpec:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", model_id):
        raise RegistryError(f"{where}: ids are 1-100 letters, digits and . _ : -")
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: an entry is a JSON object")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                            f"fields: {', '.join(sorted(_ENTRY_KEYS))}")
    engine = _text(entry, "engine", where, required=True)
    if engine not in _REMOTE_API:
        raise RegistryError(f"{where}: engine {engine!r} is not one of {', '.join(ENGINES)}")
    offline = _offline(entry.get("models"), where)
    extra = entry.get("extra_kwargs") or {}
    if not isinstance(extra, dict):
        raise RegistryError(f"{where}: extra_kwargs is a JSON object")
    remote = _remote(model_id, engine, offline, extra, env, where)
    if remote is None and engine not in _LOCAL:
        raise RegistryError(
            f"{where}: engine {engine!r} runs only behind a vLLM server: set extra_kwargs.vllm_host "
            f"(or QWEN3_VLLM_HOST{'' if engine in _QWEN3 else ' for qwen3 models'}); "
            "embedded Qwen3-ASR is not supported")
    return ModelSpec(
        id=model_id, name=_text(entry, "name", where) or model_id, engine=engine,
        description=_text(entry, "description", where), languages=_languages(entry, where),
        default=_boolean(entry, "default", where), offline=offline, remote=remote,
        supports_realtime=_boolean(entry, "supports_realtime", where),
        fallbacks=_fallbacks(entry, where))


def _remote(model_id: str, engine: str, offline: str | None, extra: dict[str, Any],
            env: Mapping[str, str], where: str) -> RemoteTarget | None:
    key = re.sub(r"[^A-Z0-9]", "_", model_id.upper())
    host = (_env_for(env, "QWEN3_VLLM_HOST_", key) or _str_or_none(extra.get("vllm_host"))
            or (env.get("QWEN3_VLLM_HOST") if engine in _QWEN3 else None))
    if not host:
        return None
    port_text = (_env_for(env, "QWEN3_VLLM_PORT_", key) or extra.get("vllm_port")
                 or (env.get("QWEN3_VLLM_PORT") if engine in _QWEN3 else None) or DEFAULT_VLLM_PORT)
    try:
        port = int(port_text)
    except (TypeError, ValueError):
        raise RegistryError(f"{where}: vllm_port {port_text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise RegistryError(f"{where}: vllm_port {port} is out of range")
    scheme = "https" if extra.get("vllm_tls") is True else "http"
    timeout = extra.get("timeout_s", 120.0)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise RegistryError(f"{where}: extra_kwargs.timeout_s must be 0..3600 seconds")
    api_key_env = _str_or_none(extra.get("api_key_env"))
    return RemoteTarget(api=_REMOTE_API[engine], base_url=f"{scheme}://{host.strip()}:{port}",
                        model=_str_or_none(extra.get("served_model_name")) or offline or model_id,
                        api_key_env=api_key_env, timeout_s=float(timeout))


def _env_for(env: Mapping[str, str], prefix: str, key: str) -> str | None:
    """The per-model variable for `key`; the longest `_`-separated tail of it (two parts at
    least, so QWEN3_VLLM_HOST_B never matches every "-b" model) that is set wins."""
    parts = key.split("_")
    for start in range(max(1, len(parts) - 1)):
        value = env.get(prefix + "_".join(parts[start:]))
        if value:
            return value
    return None


def _offline(models: Any, where: str) -> str | None:
    if models is None:
        return None
    if not isinstance(models, dict) or not isinstance(models.get("offline", ""), str):
        raise RegistryError(f'{where}: "models" is {{"offline": "<directory or model name>"}}')
    return models.get("offline") or None


def _languages(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    value = entry.get("languages") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: languages is a list of ISO-639-1 codes")
    unknown = [v for v in value if v not in ISO_CODES]
    if unknown:
        raise RegistryError(f"{where}: unknown language code(s) {', '.join(unknown)}")
    return tuple(value)


def _fallbacks(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    value = entry.get("fallbacks") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: fallbacks is a list of model ids")
    return tuple(value)


def _check_fallbacks(models: dict[str, ModelSpec], path: Path) -> None:
    for spec in models.values():
        for other in spec.fallbacks:
            if other not in models:
                raise RegistryError(f"{path}: model {spec.id!r} falls back to {other!r}, which is "
                                    f"not in the file")
            if other == spec.id:
                raise RegistryError(f"{path}: model {spec.id!r} falls back to itself")


def _pick_default(models: dict[str, ModelSpec], asked: str | None, path: Path) -> str:
    if asked is not None:
        if asked not in models:
            raise RegistryError(f"--default-model {asked!r} is not in {path} "
                                f"(models: {', '.join(models)})")
        return asked
    marked = [spec.id for spec in models.values() if spec.default]
    if len(marked) > 1:
        raise RegistryError(f"{path}: more than one default model ({', '.join(marked)})")
    return marked[0] if marked else next(iter(models))


def _text(entry: dict[str, Any], name: str, where: str, *, required: bool = False) -> str:
    value = entry.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise RegistryError(f"{where}: {name} is {'a required' if required else 'a'} string")
    return value


def _boolean(entry: dict[str, Any], name: str, where: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise RegistryError(f"{where}: {name} is true or false")
    return value


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
