"""The container files: docker-compose.yml, deploy/, Dockerfile, requirements-gpu.txt.

`docker compose config` validates the compose file where the compose plugin exists; the
structural checks below run everywhere (PyYAML, pinned in requirements.txt). Every command
line in the compose file goes through its server's own argument parser, so a flag that does
not exist fails here, not in production.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from web_demo.server.engines.asr_registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OURS = {"s2s": 8002, "asr": 8003, "tts": 8004, "s2s-replica2": 8002}
VLLM = {"vllm-qwen3-1.7b": 8000, "vllm-qwen3-0.6b": 8000, "vllm-whisper": 8005}
SERVER_MODULES = {"web_demo.server.server", "web_demo.server.asr_server", "web_demo.server.tts_server"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _port_flag(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1])


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="no `docker compose` here; the structural checks cover it")
def test_docker_compose_config_accepts_the_file() -> None:
    for profile in ([], ["--profile", "replicas"]):
        run = subprocess.run(["docker", "compose", "-f", str(COMPOSE), *profile, "config", "--quiet"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert run.returncode == 0, run.stderr


def test_the_services_of_the_plans(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*OURS, *VLLM, "lb"}
    assert services["s2s-replica2"]["profiles"] == ["replicas"] == services["lb"]["profiles"]
    assert all("profiles" not in services[name] for name in ("s2s", "asr", "tts", *VLLM))


def test_every_service_has_a_healthcheck_and_a_restart_policy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        assert service.get("restart") == "unless-stopped", name
    for name, port in {**OURS, **VLLM}.items():
        assert f"127.0.0.1:{port}/health" in " ".join(services[name]["healthcheck"]["test"]).replace(
            "' + os.environ['PORT'] + '", str(port)), name
    for name in OURS:
        assert services[name]["environment"]["PORT"] == str(_port_flag(_argv(services[name]))), name
    assert "/lb-health" in services["lb"]["healthcheck"]["test"][-1]


def test_gpu_services_reserve_gpus(services: dict[str, dict[str, Any]]) -> None:
    for name in [*OURS, *VLLM]:
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert "device_ids" in device or "count" in device, name
    assert "deploy" not in services["lb"]


def test_depends_on_waits_for_health(services: dict[str, dict[str, Any]]) -> None:
    seen = 0
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, (name, dep)
            assert cond == {"condition": "service_healthy"}, (name, dep)
            seen += 1
    assert set(services["asr"]["depends_on"]) == set(VLLM)
    assert set(services["lb"]["depends_on"]) == {"s2s", "s2s-replica2"}
    assert seen >= 6


def test_ports_match_the_plans(services: dict[str, dict[str, Any]]) -> None:
    assert services["s2s"]["ports"] == ["8002:8002"]
    assert services["asr"]["ports"] == ["8003:8003"]
    assert services["tts"]["ports"] == ["8004:8004"]
    assert services["vllm-qwen3-1.7b"]["ports"] == ["8001:8000"]  # seed 000's debug port
    assert "ports" not in services["vllm-qwen3-0.6b"]
    assert services["vllm-whisper"]["ports"] == ["8005:8005"]  # the plan's all-vLLM ASR port
    assert "ports" not in services["s2s-replica2"]  # reached through the balancer only
    for name, port in {**OURS, **VLLM}.items():
        assert _port_flag(_argv(services[name])) == port, name


def test_vllm_commands_are_the_seeds(services: dict[str, dict[str, Any]]) -> None:
    for name, model in (("vllm-qwen3-1.7b", "Qwen/Qwen3-ASR-1.7B"),
                        ("vllm-qwen3-0.6b", "Qwen/Qwen3-ASR-0.6B")):
        argv = _argv(services[name])
        assert argv[:2] == ["--model", model]
        assert argv[argv.index("--max-model-len") + 1] == "32768"
        assert argv[argv.index("--host") + 1] == "0.0.0.0"
        assert services[name]["image"].endswith("vllm/vllm-openai:latest}")
    assert _argv(services["vllm-whisper"])[:2] == ["--model", "openai/whisper-large-v3"]
    env = services["asr"]["environment"]
    assert (env["QWEN3_VLLM_HOST"], env["QWEN3_VLLM_PORT"]) == ("vllm-qwen3-1.7b", "8000")
    assert (env["QWEN3_VLLM_HOST_0_6B"], env["QWEN3_VLLM_PORT_0_6B"]) == ("vllm-qwen3-0.6b", "8000")


def test_our_commands_parse_with_the_servers_own_flags(services: dict[str, dict[str, Any]]) -> None:
    for name in OURS:
        argv = [a for a in _argv(services[name]) if not a.startswith("${")]
        assert argv[:2] == ["python", "-m"] and argv[2] in SERVER_MODULES, name
        importlib.import_module(argv[2]).parse_args(argv[3:])  # SystemExit on an unknown flag
    s2s = " ".join(_argv(services["s2s"]))
    assert ("--model-path pretrained_models/Fun-Audio-Chat-8B --port 8002 --tts-gpu 0 --host 0.0.0.0"
            in s2s)
    tts = " ".join(_argv(services["tts"]))
    assert "--model-path pretrained_models/Fun-CosyVoice3-0.5B-2512 --port 8004 --device cuda:0" in tts
    asr = " ".join(_argv(services["asr"]))
    assert "--models deploy/models.compose.json --port 8003 --device cuda:0 --host 0.0.0.0" in asr


def test_models_compose_json_points_at_the_vllm_services(services: dict[str, dict[str, Any]]) -> None:
    env = {k: str(v) for k, v in services["asr"]["environment"].items()}
    for environ in ({}, env):  # the file alone, and as the asr container sees it
        registry = load_registry(DEPLOY / "models.compose.json", environ=environ)
        remotes = {spec.id: spec.remote for spec in registry.models.values() if spec.remote}
        assert set(remotes) == {"qwen3-asr-1.7b", "qwen3-asr-0.6b", "whisper-large-v3"}
        for model_id, remote in remotes.items():
            host, port = re.fullmatch(r"http://([^:/]+):(\d+)", remote.base_url).groups()  # type: ignore[union-attr]
            assert host in VLLM, (model_id, host)
            assert int(port) == VLLM[host], (model_id, remote.base_url)
            served = _argv(services[host])[1]
            assert remote.model == served, (model_id, remote.model, served)
        assert registry.default == "fun-asr-nano"


def test_volumes_hold_the_model_caches(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert "fac-cache" in compose["volumes"]
    for name in [*OURS, *VLLM]:
        mounts = services[name]["volumes"]
        assert "~/.cache/huggingface:/root/.cache/huggingface" in mounts, name
        assert "~/.cache/modelscope:/root/.cache/modelscope" in mounts, name
    for name in OURS:
        assert "./pretrained_models:/app/pretrained_models" in services[name]["volumes"], name


def test_nginx_config_and_its_upstream_include(services: dict[str, dict[str, Any]]) -> None:
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    upstream_block = re.search(r"upstream s2s \{(.*?)\n    \}", conf, re.S)
    assert upstream_block is not None
    body = upstream_block.group(1)
    assert "least_conn;" in body and "include s2s_upstream.conf;" in body
    assert re.search(r"location ~ \^/api/\(chat\|simplex\)\$", conf)
    for needed in ("proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $connection_upgrade;", "proxy_http_version 1.1;",
                   "proxy_read_timeout 3600s;", "listen 8080;"):
        assert needed in conf, needed
    servers = re.findall(r"^server (\S+):(\d+) (.*);$",
                         (DEPLOY / "s2s_upstream.compose.conf").read_text(encoding="utf-8"), re.M)
    assert [(h, int(p)) for h, p, _ in servers] == [("s2s", 8002), ("s2s-replica2", 8002)]
    assert all("max_fails=" in opts and "fail_timeout=" in opts for _, _, opts in servers)
    assert "./deploy/s2s_upstream.compose.conf:/etc/nginx/s2s_upstream.conf:ro" in services["lb"]["volumes"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin") is None, reason="no nginx binary")
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "nginx.conf", tmp_path / "nginx.conf")
    (tmp_path / "s2s_upstream.conf").write_text("server 127.0.0.1:9 max_fails=3 fail_timeout=30s;\n")
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")
    assert nginx is not None
    run = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_dockerfile_targets() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    names = [name for _, name in stages]
    assert {"cpu", "cuda"} <= set(names)
    for source in re.findall(r"--from=(\S+)", text):
        assert source in names, source
    for base, name in stages:  # every stage builds on the base image or an earlier stage
        assert base == "${PYTHON_IMAGE}" or names.index(base) < names.index(name), (base, name)
    assert "requirements-gpu.txt" in text and "grep -v '^onnxruntime=='" in text
    build = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["x-ours"]["build"]
    assert build["target"] in names
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"pretrained_models", ".venv", ".venv-vllm", ".git"} <= set(ignored)


def test_requirements_gpu_matches_requirements() -> None:
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                out[name.split("[")[0]] = version
        return out

    cpu, gpu = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-gpu.txt")
    assert gpu["torch"] == cpu["torch"]
    assert gpu["funasr"] == cpu["funasr"]
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    major_minor = lambda v: tuple(v.split(".")[:2])
    assert int(major_minor(gpu["onnxruntime-gpu"])[1]) >= int(major_minor(cpu["onnxruntime"])[1]) - 1
    assert not {"vllm", "torchaudio"} & set(gpu)  # vLLM has its own venv; torchaudio: see the file
