"""The ASR and TTS servers' own pages at `/`, driven in chromium against the real servers as
processes on their CPU engines (whisper tiny.en, espeak-ng), both started with --api-key: the
key asked for, one request of each through the page, one error each shown visibly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import Scenario
from tests.e2e.conftest import RunningServer, start_server, stop_server
from tests.helpers import FIXTURES, plain_text

pytestmark = pytest.mark.slow

KEY = "page-key-7"
FOX_WAV = FIXTURES / "speech" / "fox.wav"
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def asr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("asr_page")
    # no weights at --model-path: the whisper tiny.en stand-in, whatever pretrained_models holds
    server = start_server(["--model-path", str(tmp / "no-model"), "--device", "cpu", "--api-key", KEY],
                          tmp / "asr_server.log", module="web_demo.server.asr_server")
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def tts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tts_page")
    server = start_server(["--engine", "espeak-ng", "--device", "cpu", "--api-key", KEY],
                          tmp / "tts_server.log", module="web_demo.server.tts_server")
    yield server
    assert stop_server(server) == 0


def test_asr_page_transcribes_a_file_and_the_microphone(asr_server: RunningServer, scenario: Scenario,
                                                        tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("these are notes, not audio\n")
    r = scenario("asr_page", url=f"http://127.0.0.1:{asr_server.port}/", key=KEY, wav=str(FOX_WAV),
                 notAudio=str(not_audio))
    assert "401" in r["keyError"] and "API key" in r["keyError"] and r["settingsOpen"], r
    assert r["models"] == ["whisper-tiny.en"]
    assert "could not decode audio" in r["badError"] and "400" in r["badError"], r["badError"]
    assert r["resultHiddenOnError"]
    for heard in (r["file"], r["mic"]):
        assert heard["error"] is None and "fox" in heard["text"].lower(), heard
        assert heard["rows"], heard  # timed segments: [#, start, end, text]
        number, start, end, text = heard["rows"][0]
        assert number == "1" and start == "0:00.000" and end > start and "fox" in text.lower(), heard
    assert r["recorded"].startswith("recorded: recording."), r["recorded"]
    assert {"quick", "brown", "fox", "lazy", "dog"} <= set(plain_text(r["file"]["text"]).split())
    log = asr_server.log.read_text()
    assert log.count("path=/v1/audio/transcriptions status=200") == 2, log[-2000:]


def test_tts_page_speaks_into_a_playable_audio_element(tts_server: RunningServer, scenario: Scenario) -> None:
    r = scenario("tts_page", url=f"http://127.0.0.1:{tts_server.port}/", key=KEY, text=SENTENCE)
    assert "401" in r["keyError"] and "API key" in r["keyError"], r
    assert r["voice"] == "中文女" and "英文女" in r["voices"]  # the server's default speaker, preselected
    assert r["models"][0] == "espeak-ng" and "tts-1" in r["models"]
    assert "input is required and must not be empty" in r["emptyError"], r["emptyError"]
    assert r["resultHiddenOnError"]
    audio = r["audio"]
    assert audio["src"].startswith("blob:") and audio["error"] is None, audio
    assert audio["duration"] > 0.5 and audio["currentTime"] > 0.2, audio
    assert r["error"] is None
    log = tts_server.log.read_text()
    assert "path=/v1/audio/speech status=400" in log and "path=/v1/audio/speech status=200" in log
