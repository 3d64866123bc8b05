#!/usr/bin/env python3
"""The models scripts/download_models.sh fetches, and the check that a download is complete.

Standard library only: it runs before .venv exists. Three commands:

    python3 scripts/verify_models.py list                      # keys, repositories, targets
    python3 scripts/verify_models.py check DIR --kind KIND     # exit 0 if complete, else 1
    python3 scripts/verify_models.py plan --source hf --only s2s,asr [--models-dir D]

`plan` prints one tab-separated line per selected model for the shell script:
key, repository, destination (a directory, or `hf-cache` for models that vLLM containers
read from the Hugging Face cache), kind, status (`present`, `missing`, `incomplete: ...`).

"Complete" means the files the loaders read exist and are not empty: for safetensors
checkpoints config.json and every shard named in model.safetensors.index.json (whose sizes
add up to at least the index's total_size), for CosyVoice3 and Fun-ASR-Nano the release
files this project's loaders open. An unfinished `huggingface-cli download --local-dir`
leaves `*.incomplete` files under `.cache/huggingface/`; those count as incomplete too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HF_CACHE = "hf-cache"


@dataclass(frozen=True)
class ModelSpec:
    key: str
    name: str
    kind: str  # safetensors | cosyvoice3 | funasr-nano
    hf_repo: str
    ms_repo: str | None  # None: not on ModelScope under a name we know
    local_dir: str | None  # under --models-dir; None: the hub's cache (what vLLM --model reads)
    ms_local_dir: str | None = None  # ModelScope target of cache models (seed 000's path)
    default: bool = False


MODELS: dict[str, ModelSpec] = {m.key: m for m in (
    ModelSpec("s2s", "Fun-Audio-Chat-8B", "safetensors", "FunAudioLLM/Fun-Audio-Chat-8B",
              "FunAudioLLM/Fun-Audio-Chat-8B", "Fun-Audio-Chat-8B", default=True),
    ModelSpec("tts", "Fun-CosyVoice3-0.5B-2512", "cosyvoice3", "FunAudioLLM/Fun-CosyVoice3-0.5B-2512",
              "FunAudioLLM/Fun-CosyVoice3-0.5B-2512", "Fun-CosyVoice3-0.5B-2512", default=True),
    ModelSpec("asr", "Fun-ASR-Nano-2512", "funasr-nano", "FunAudioLLM/Fun-ASR-Nano-2512",
              "FunAudioLLM/Fun-ASR-Nano-2512", "Fun-ASR-Nano-2512", default=True),
    ModelSpec("qwen3-asr-1.7b", "Qwen3-ASR-1.7B", "safetensors", "Qwen/Qwen3-ASR-1.7B",
              "Qwen/Qwen3-ASR-1.7B", None, "~/.cache/modelscope/hub/Qwen/Qwen3-ASR-1.7B"),
    ModelSpec("qwen3-asr-0.6b", "Qwen3-ASR-0.6B", "safetensors", "Qwen/Qwen3-ASR-0.6B",
              "Qwen/Qwen3-ASR-0.6B", None, "~/.cache/modelscope/hub/Qwen/Qwen3-ASR-0.6B"),
    ModelSpec("whisper-large-v3", "whisper-large-v3", "safetensors", "openai/whisper-large-v3",
              None, None),
)}
# --only accepts these names for groups of keys
ALIASES: dict[str, list[str]] = {
    "default": [k for k, m in MODELS.items() if m.default],
    "qwen3-asr": ["qwen3-asr-1.7b", "qwen3-asr-0.6b"],
    "whisper": ["whisper-large-v3"],
    "all": list(MODELS),
}

# Files the loaders open (utils/cosyvoice3/loading.py and the TTS front end; the funasr
# worker); directories must hold at least one non-empty file.
REQUIRED: dict[str, tuple[str, ...]] = {
    "cosyvoice3": ("cosyvoice3.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx",
                   "speech_tokenizer_v3.onnx", "CosyVoice-BlankEN/"),
    "funasr-nano": ("config.yaml", "model.pt", "Qwen3-0.6B/config.json", "Qwen3-0.6B/"),
}


def check_dir(path: Path, kind: str) -> list[str]:
    """Problems that make `path` an incomplete `kind` download; empty when complete."""
    if not path.is_dir():
        return [f"{path}: no such directory"]
    problems = _unfinished(path)
    if kind == "safetensors":
        problems += _check_safetensors(path)
    elif kind in REQUIRED:
        problems += [p for name in REQUIRED[kind] for p in _check_entry(path, name)]
    else:
        raise ValueError(f"unknown kind {kind!r}; known: safetensors, {', '.join(REQUIRED)}")
    return problems


def _check_entry(root: Path, name: str) -> list[str]:
    path = root / name.rstrip("/")
    if name.endswith("/"):
        if not path.is_dir():
            return [f"{name}: missing directory"]
        if not any(f.is_file() and f.stat().st_size > 0 for f in path.rglob("*")):
            return [f"{name}: directory holds no non-empty file"]
        return []
    if not path.is_file():
        return [f"{name}: missing"]
    if path.stat().st_size == 0:
        return [f"{name}: empty (0 bytes)"]
    return []


def _check_safetensors(root: Path) -> list[str]:
    problems = _check_entry(root, "config.json")
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            shards = sorted(set(data["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            return [*problems, f"model.safetensors.index.json: unreadable ({exc})"]
        if not shards:
            return [*problems, "model.safetensors.index.json: weight_map is empty"]
        bad = [p for shard in shards for p in _check_entry(root, shard)]
        problems += bad
        total = (data.get("metadata") or {}).get("total_size")
        if not bad and isinstance(total, int):
            on_disk = sum((root / s).stat().st_size for s in shards)
            if on_disk < total:
                problems.append(f"shards hold {on_disk} bytes, less than the index's total_size {total}")
        return problems
    singles = sorted(root.glob("*.safetensors"))
    if not singles:
        return [*problems, "no model.safetensors.index.json and no *.safetensors file"]
    return problems + [p for f in singles for p in _check_entry(root, f.name)]


def _unfinished(root: Path) -> list[str]:
    """huggingface_hub's local-dir downloads in progress (or interrupted)."""
    meta = root / ".cache" / "huggingface"
    if not meta.is_dir():
        return []
    partial = sorted(p.name for p in meta.rglob("*.incomplete"))
    return [f"unfinished download ({len(partial)} partial files, e.g. {partial[0]}); "
            "run the download again to resume"] if partial else []


def hf_cache_snapshot(repo: str) -> Path | None:
    """The cached snapshot of `repo` that refs/main points at, as huggingface_hub lays it out."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    repo_dir = Path(hub) / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = repo_dir / "snapshots" / ref.read_text().strip()
    return snapshot if snapshot.is_dir() else None


def select(only: Sequence[str]) -> list[ModelSpec]:
    """Models named by --only values (comma lists, keys or ALIASES), in MODELS order."""
    wanted: set[str] = set()
    for item in only or ["default"]:
        for name in filter(None, (x.strip() for x in item.split(","))):
            if name in ALIASES:
                wanted.update(ALIASES[name])
            elif name in MODELS:
                wanted.add(name)
            else:
                raise SystemExit(f"unknown model {name!r}; choose from {', '.join([*MODELS, *ALIASES])}")
    return [m for k, m in MODELS.items() if k in wanted]


def destination(spec: ModelSpec, source: str, models_dir: Path) -> tuple[str, Path | None]:
    """(what the downloader is told, the directory to check now or None if not there yet)."""
    if spec.local_dir is not None:
        path = models_dir / spec.local_dir
        return str(path), path
    if source == "ms":
        assert spec.ms_local_dir is not None
        path = Path(os.path.expanduser(spec.ms_local_dir))
        return str(path), path
    return HF_CACHE, hf_cache_snapshot(spec.hf_repo)


def status(spec: ModelSpec, path: Path | None) -> str:
    if path is None or not path.exists():
        return "missing"
    problems = check_dir(path, spec.kind)
    return "present" if not problems else "incomplete: " + "; ".join(problems)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known models")
    c = sub.add_parser("check", help="is DIR a complete download of KIND")
    c.add_argument("dir", type=Path)
    c.add_argument("--kind", required=True, choices=["safetensors", *REQUIRED])
    c.add_argument("--json", action="store_true")
    pl = sub.add_parser("plan", help="tab-separated plan for download_models.sh")
    pl.add_argument("--source", choices=["hf", "ms"], default="hf")
    pl.add_argument("--only", action="append", default=[])
    pl.add_argument("--models-dir", type=Path, default=Path("pretrained_models"))
    a = p.parse_args(argv)
    if a.cmd == "list":
        for m in MODELS.values():
            where = f"{m.local_dir}/" if m.local_dir else "Hugging Face cache (vLLM --model)"
            print(f"{m.key:<17} {'default ' if m.default else 'optional'} hf:{m.hf_repo}  "
                  f"ms:{m.ms_repo or '-'}  -> {where}")
        return 0
    if a.cmd == "check":
        problems = check_dir(a.dir, a.kind)
        if a.json:
            print(json.dumps({"dir": str(a.dir), "kind": a.kind, "ok": not problems, "problems": problems}))
        else:
            for line in problems:
                print(f"{a.dir}: {line}", file=sys.stderr)
            if not problems:
                print(f"{a.dir}: complete ({a.kind})")
        return 1 if problems else 0
    for spec in select(a.only):
        repo = spec.hf_repo if a.source == "hf" else spec.ms_repo
        if repo is None:
            print(f"{spec.key}\t-\t-\t{spec.kind}\tunavailable: not on ModelScope; "
                  "use --source hf (HF_ENDPOINT for a mirror)")
            continue
        dest, path = destination(spec, a.source, a.models_dir)
        print(f"{spec.key}\t{repo}\t{dest}\t{spec.kind}\t{status(spec, path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
