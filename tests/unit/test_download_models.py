"""scripts/verify_models.py on fake model directories, and download_models.sh --dry-run
(which never touches the network)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from scripts import verify_models as vm

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "download_models.sh"


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def fake_sharded(root: Path, *, shards: int = 3, total_size: int | None = None) -> Path:
    """A released-layout safetensors checkpoint: config, index, shards of 10 bytes each."""
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    _write(root / "config.json", b"{}")
    index = {"metadata": {"total_size": total_size if total_size is not None else 10 * shards},
             "weight_map": {f"layer.{i}.weight": name for i, name in enumerate(names)}}
    _write(root / "model.safetensors.index.json", json.dumps(index).encode())
    for name in names:
        _write(root / name, b"0123456789")
    return root


def fake_cosyvoice3(root: Path) -> Path:
    for name in vm.REQUIRED["cosyvoice3"]:
        _write(root / name / "config.json" if name.endswith("/") else root / name)
    return root


def fake_funasr_nano(root: Path) -> Path:
    for name in ("config.yaml", "model.pt", "configuration.json", "Qwen3-0.6B/config.json",
                 "Qwen3-0.6B/tokenizer.json"):
        _write(root / name)
    return root


def test_complete_sharded_checkpoint(tmp_path: Path) -> None:
    assert vm.check_dir(fake_sharded(tmp_path), "safetensors") == []


def test_single_file_checkpoint(tmp_path: Path) -> None:
    _write(tmp_path / "config.json", b"{}")
    _write(tmp_path / "model.safetensors", b"weights")
    assert vm.check_dir(tmp_path, "safetensors") == []
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert vm.check_dir(tmp_path, "safetensors") == ["model.safetensors: empty (0 bytes)"]


def test_missing_and_empty_shards_are_named(tmp_path: Path) -> None:
    root = fake_sharded(tmp_path)
    (root / "model-00002-of-00003.safetensors").unlink()
    (root / "model-00003-of-00003.safetensors").write_bytes(b"")
    assert vm.check_dir(root, "safetensors") == ["model-00002-of-00003.safetensors: missing",
                                                 "model-00003-of-00003.safetensors: empty (0 bytes)"]


def test_shards_smaller_than_the_index_total(tmp_path: Path) -> None:
    problems = vm.check_dir(fake_sharded(tmp_path, total_size=1000), "safetensors")
    assert problems == ["shards hold 30 bytes, less than the index's total_size 1000"]


def test_missing_config_and_no_weights(tmp_path: Path) -> None:
    assert vm.check_dir(tmp_path, "safetensors") == [
        "config.json: missing", "no model.safetensors.index.json and no *.safetensors file"]
    assert vm.check_dir(tmp_path / "absent", "safetensors") == [f"{tmp_path / 'absent'}: no such directory"]


def test_unfinished_hf_download_is_incomplete(tmp_path: Path) -> None:
    root = fake_sharded(tmp_path)
    _write(root / ".cache" / "huggingface" / "download" / "abc.incomplete")
    [problem] = vm.check_dir(root, "safetensors")
    assert problem.startswith("unfinished download (1 partial files")


def test_cosyvoice3_and_funasr_layouts(tmp_path: Path) -> None:
    cv = fake_cosyvoice3(tmp_path / "cv")
    assert vm.check_dir(cv, "cosyvoice3") == []
    (cv / "flow.pt").unlink()
    (cv / "CosyVoice-BlankEN" / "config.json").write_bytes(b"")
    assert vm.check_dir(cv, "cosyvoice3") == ["flow.pt: missing",
                                              "CosyVoice-BlankEN/: directory holds no non-empty file"]
    nano = fake_funasr_nano(tmp_path / "nano")
    assert vm.check_dir(nano, "funasr-nano") == []
    (nano / "model.pt").unlink()
    assert vm.check_dir(nano, "funasr-nano") == ["model.pt: missing"]


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_sharded(tmp_path)
    assert vm.main(["check", str(root), "--kind", "safetensors", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (root / "config.json").unlink()
    assert vm.main(["check", str(root), "--kind", "safetensors"]) == 1


def test_select_aliases_and_unknown_names() -> None:
    assert [m.key for m in vm.select([])] == ["s2s", "tts", "asr"]
    assert [m.key for m in vm.select(["asr,qwen3-asr"])] == ["asr", "qwen3-asr-1.7b", "qwen3-asr-0.6b"]
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        vm.select(["nope"])


def test_hf_cache_snapshot_follows_refs_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert vm.hf_cache_snapshot("Qwen/Qwen3-ASR-0.6B") is None
    repo = tmp_path / "hub" / "models--Qwen--Qwen3-ASR-0.6B"
    fake_sharded(repo / "snapshots" / "abc123")
    _write(repo / "refs" / "main", b"abc123")
    assert vm.hf_cache_snapshot("Qwen/Qwen3-ASR-0.6B") == repo / "snapshots" / "abc123"


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELS_DIR": str(tmp_path / "models"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([str(SCRIPT), "--dry-run", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=60)


def test_dry_run_plans_the_default_models_and_skips_complete_ones(tmp_path: Path) -> None:
    fake_funasr_nano(tmp_path / "models" / "Fun-ASR-Nano-2512")
    run = _dry_run(tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "dry run: nothing is downloaded" in out
    models = tmp_path / "models"
    assert out.count("would run: ") == 2
    assert f"download FunAudioLLM/Fun-Audio-Chat-8B --local-dir {models}/Fun-Audio-Chat-8B" in out
    cv3 = "Fun-CosyVoice3-0.5B-2512"
    assert f"download FunAudioLLM/{cv3} --local-dir {models}/{cv3}" in out
    assert "asr (FunAudioLLM/Fun-ASR-Nano-2512): present and complete" in out
    assert "--kind cosyvoice3" in out
    assert not (tmp_path / "models" / "Fun-Audio-Chat-8B").exists()


def test_dry_run_modelscope_uses_the_plans_command(tmp_path: Path) -> None:
    run = _dry_run(tmp_path, "--source", "ms", "--only", "s2s")
    assert run.returncode == 0, run.stderr
    assert (f"download --model FunAudioLLM/Fun-Audio-Chat-8B --local_dir {tmp_path}/models/Fun-Audio-Chat-8B"
            in run.stdout)
    assert "Fun-ASR-Nano" not in run.stdout


def test_dry_run_cache_models_and_a_mirror(tmp_path: Path) -> None:
    env_run = subprocess.run(
        [str(SCRIPT), "--dry-run", "--only", "qwen3-asr-0.6b"], cwd=ROOT, text=True, capture_output=True,
        timeout=60, env={**os.environ, "HF_HOME": str(tmp_path), "HF_ENDPOINT": "https://mirror.example"})
    assert env_run.returncode == 0, env_run.stderr
    assert "source: Hugging Face (https://mirror.example" in env_run.stdout
    assert "download Qwen/Qwen3-ASR-0.6B\n" in env_run.stdout  # no --local-dir: the hub cache


def test_bad_arguments(tmp_path: Path) -> None:
    assert _dry_run(tmp_path, "--source", "s3").returncode == 2
    bad = _dry_run(tmp_path, "--only", "nope")
    assert bad.returncode != 0 and "unknown model 'nope'" in bad.stderr
    whisper_ms = _dry_run(tmp_path, "--source", "ms", "--only", "whisper")
    assert whisper_ms.returncode == 1 and "not on ModelScope" in whisper_ms.stderr
