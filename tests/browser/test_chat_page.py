"""The S2S server's own chat page at `/` (web_demo/client/), driven in chromium against the
real server as a process on the CPU cascade engine (whisper tiny.en + espeak-ng; the reply
echoes what it heard). A WAV file is the microphone. Every assertion reads the page's
read-only hook `window.facClient` or what the page displays; screenshots of each state go to
output/browser/<test>/."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.browser.conftest import ARTIFACTS, HERE, Scenario
from tests.e2e.conftest import RunningServer, free_port, start_server, stop_server
from tests.helpers import FIXTURES
from utils.ogg import split_ogg_pages
from utils.opus import OpusStreamEncoder, decode_pages

FOX_WORDS = {"quick", "fox", "lazy", "dog"}
LEAD_S = 1.0  # silence before the words: the talk button goes down within it
HOLD_MS = 4600  # the microphone file (lead + 3 s of fox.wav + 0.5 s) plays from the page's connect
ECHO = "Echo mode, no language model configured."
BARGE_IN_LIMIT_MS = 150
HELLO_AT_S = 9.0


class ChatServer:
    """The S2S server (cascade engine) as a process on one fixed port, so it can be restarted
    under a page."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.running: RunningServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.running = start_server(["--engine", "cascade", "--asr-language", "en"], self.log,
                                    port=self.port)

    def stop(self) -> int:
        assert self.running is not None
        return stop_server(self.running)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    chat = ChatServer(tmp_path_factory.mktemp("chat_page") / "server.log")
    chat.start()
    yield chat
    assert chat.stop() == 0


@pytest.fixture(scope="module")
def fox_wav(tmp_path_factory: pytest.TempPathFactory) -> str:
    """fox.wav after LEAD_S of silence: chromium plays the file from the moment the page
    opens the microphone, and a person presses the button before speaking too."""
    pcm, rate = sf.read(FIXTURES / "speech" / "fox.wav", dtype="float32")
    lead, tail = np.zeros(int(LEAD_S * rate), np.float32), np.zeros(rate // 2, np.float32)
    path = tmp_path_factory.mktemp("mic") / "fox_lead.wav"
    sf.write(path, np.concatenate([lead, pcm, tail]), rate)
    return str(path)


@pytest.fixture(scope="module")
def fox_then_hello_wav(tmp_path_factory: pytest.TempPathFactory) -> str:
    """fox.wav, then silence until HELLO_AT_S, when hello.wav speaks over the echo's reply
    (which starts about 1-2 s after the fox and lasts about 7 s)."""
    fox, rate = sf.read(FIXTURES / "speech" / "fox.wav", dtype="float32")
    hello, _ = sf.read(FIXTURES / "speech" / "hello.wav", dtype="float32")
    pcm = np.zeros(int((HELLO_AT_S + 3.5) * rate), np.float32)
    pcm[int(LEAD_S * rate):int(LEAD_S * rate) + len(fox)] = fox
    pcm[int(HELLO_AT_S * rate):int(HELLO_AT_S * rate) + len(hello)] = hello
    path = tmp_path_factory.mktemp("mic") / "fox_then_hello.wav"
    sf.write(path, pcm, rate)
    return str(path)


Steps = dict[str, Callable[[], None]]


@pytest.fixture
def interactive_scenario(request: pytest.FixtureRequest, scenario: Scenario) -> Callable[..., dict[str, Any]]:
    """Like `scenario` (whose set-up checks it reuses), for a scenario that stops at `STEP
    <name>` lines: `steps[name]()` runs, then the scenario is told to go on."""
    artifacts = ARTIFACTS / request.node.name

    def run(name: str, steps: Steps, timeout_s: float = 150.0, **args: Any) -> dict[str, Any]:
        shutil.rmtree(artifacts, ignore_errors=True)
        argv = ["node", str(HERE / f"{name}.mjs"), json.dumps({"artifacts": str(artifacts), **args})]
        with tempfile.TemporaryFile("w+") as stderr:  # a file: a full pipe would block node
            proc = subprocess.Popen(argv, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
            killer = threading.Timer(timeout_s, proc.kill)
            killer.start()
            try:
                lines = _follow(proc, steps)
            except BaseException:
                proc.kill()
                raise
            finally:
                killer.cancel()
            stderr.seek(0)
            errors = stderr.read()
        results = [line for line in lines if line.startswith("RESULT ")]
        if proc.returncode != 0 or not results:
            raise AssertionError(f"scenario {name} failed (rc {proc.returncode}):\n"
                                 f"{''.join(lines)[-4000:]}\n{errors[-8000:]}")
        result: dict[str, Any] = json.loads(results[-1][len("RESULT "):])
        return result

    return run


def _follow(proc: subprocess.Popen[str], steps: Steps) -> list[str]:
    """The scenario's stdout lines until it exits, running the step each STEP line names."""
    assert proc.stdin is not None and proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("STEP "):
            steps[line[len("STEP "):].strip()]()
            proc.stdin.write("go\n")
            proc.stdin.flush()
    proc.wait()
    return lines


def words(text: str) -> set[str]:
    return set(text.lower().replace(".", " ").replace(",", " ").split())


def assert_turn(turn: dict[str, Any], heard: set[str]) -> None:
    """One answered turn: the transcript holds the spoken words, the reply text is the echo of
    it, its audio was decoded in the page and is not silence, and its latency was reported."""
    assert heard <= words(turn["user"]), turn
    assert turn["status"] == "done" and turn["final"] == turn["reply"], turn
    assert turn["final"].startswith(ECHO) and heard <= words(turn["final"]), turn
    assert turn["samples24k"] > 24000 * 2 and turn["rms"] > 0.02, turn  # seconds of speech
    assert turn["latency"]["first_audio_ms"] > 0 and turn["latency"]["first_text_ms"] > 0, turn


# ---- no browser: the page's pure modules in node ----------------------------------------

def run_node(name: str, **args: Any) -> dict[str, Any]:
    """Runs `node tests/browser/NAME.mjs '<args>'` (no browser) and returns its RESULT."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: run scripts/setup_browser.sh")
    proc = subprocess.run(["node", str(HERE / f"{name}.mjs"), json.dumps(args)], cwd=HERE,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "RESULT " in proc.stdout, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.split("RESULT ", 1)[1])
    return result


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04c11db7, unreflected) with the CRC field zeroed."""
    data = page[:22] + b"\0\0\0\0" + page[26:]
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_page_ogg_code_round_trips_the_server_stream(tmp_path: Path) -> None:
    """ogg.js demuxes the server's reply stream (split at odd places) and muxes its packets the
    way the page sends the microphone: whole pages, 2 packets each, CRCs and 48 kHz granules
    right, and the server's decoder gets the same audio from it."""
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 24000
    pcm = (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    encoder = OpusStreamEncoder()
    (tmp_path / "in.ogg").write_bytes(encoder.encode(pcm) + encoder.flush())
    r = run_node("chat_ogg", input=str(tmp_path / "in.ogg"), output=str(tmp_path / "out.ogg"),
                 sliceBytes=97, serial=1234)
    assert r["headers"] == 2 and r["packets"] == 50 and r["durations"] == [1920], r  # 40 ms each

    pages = split_ogg_pages((tmp_path / "out.ogg").read_bytes())
    assert pages[0][5] == 0x02 and pages[0][28:36] == b"OpusHead", pages[0][:40]
    assert pages[1][28:36] == b"OpusTags"
    assert len(pages) == 2 + 25
    for seq, page in enumerate(pages):
        assert int.from_bytes(page[14:18], "little") == 1234
        assert int.from_bytes(page[18:22], "little") == seq
        assert int.from_bytes(page[22:26], "little") == ogg_crc(page), f"CRC of page {seq}"
        granule = int.from_bytes(page[6:14], "little")
        assert granule == max(0, seq - 1) * 2 * 1920, (seq, granule)
        assert page[26] == (1 if seq < 2 else 2)  # segments: one per packet
    original = decode_pages(split_ogg_pages((tmp_path / "in.ogg").read_bytes()))
    assert np.array_equal(decode_pages(pages), original)


@pytest.mark.parametrize("rate", [24000, 48000, 44100, 16000])
def test_mic_worklet_delivers_20ms_frames_at_24khz(rate: int) -> None:
    """Browsers that will not run the AudioContext at 24 kHz run it at the device rate; the
    worklet then resamples, and the frames are still 480 samples of the same signal."""
    r = run_node("chat_worklet", rate=rate, hz=440, seconds=1)
    assert r["lengths"] == [480] and r["frames"] >= 49, r  # 1 s, less a partial frame
    assert r["maxError"] < 0.005, r  # linear interpolation of a 440 Hz tone
    assert abs(r["rms"] - 0.5 / np.sqrt(2)) < 0.01, r


# ---- the page in chromium against the real server ----------------------------------------

@pytest.mark.slow
def test_page_finds_webcodecs_or_says_why_not(server: ChatServer, scenario: Scenario) -> None:
    r = scenario("chat_support", url=server.url)
    for ok in (r["normal"], r["phone"]):
        assert ok["support"]["ok"] and ok["support"]["opus"], ok
        assert not ok["bannerVisible"] and not ok["connectDisabled"], ok
    assert r["normal"]["apiKey"] == "page-key-1" and r["phone"]["apiKey"] == "", r
    missing = r["noEncoder"]
    assert not missing["support"]["ok"] and missing["bannerVisible"] and missing["connectDisabled"], missing
    assert "AudioEncoder" in missing["banner"], missing
    insecure = r["insecure"]
    assert not insecure["support"]["ok"] and insecure["bannerVisible"] and insecure["connectDisabled"]
    assert "secure context" in insecure["banner"] and "https" in insecure["banner"], insecure


@pytest.mark.slow
def test_push_to_talk_turn(server: ChatServer, scenario: Scenario, fox_wav: str) -> None:
    r = scenario("chat_ptt", url=server.url, micWav=fox_wav, holdMs=HOLD_MS)
    assert r["errors"] == [] and r["state"] == "connected", r
    assert r["audio"]["contextRate"] == 24000 and r["mic"]["rate"] == 24000, r["audio"]
    assert r["counters"]["starts"] == 1 and r["counters"]["pauses"] == 1
    # 20 ms frames, 2 per page, plus the two header pages; about the time the button was held
    # (with the pre-roll; on a loaded 2-core machine the mouse-up lands up to ~1 s late)
    sent = r["counters"]["pagesSent"]
    assert 2 + (HOLD_MS / 40) * 0.8 < sent < 2 + (HOLD_MS + 1000) / 40 + 2, r["counters"]
    [turn] = r["turns"]
    assert_turn(turn, FOX_WORDS)
    assert r["reply"]["samples24k"] == turn["samples24k"] and r["droppedSamples24k"] == 0
    assert r["output"]["maxRms"] > 0.05, r["output"]  # it was played, not only decoded
    # on screen: one bubble each, the reply's text once (status and final frame not in it)
    user, assistant = r["bubbles"]
    assert user == {"role": "user", "text": turn["user"], "status": "", "meta": ""}, user
    assert assistant["text"] == turn["final"] and assistant["status"] == "", assistant
    assert "first audio" in assistant["meta"] and "first text" in assistant["meta"], assistant


@pytest.mark.slow
def test_push_to_talk_turn_with_the_microphone_at_another_rate(server: ChatServer, scenario: Scenario,
                                                               fox_wav: str) -> None:
    """Where the 24 kHz context cannot take the microphone (Firefox), capture runs at the
    device rate and the worklet resamples: the server still hears the words."""
    r = scenario("chat_ptt", url=server.url, micWav=fox_wav, holdMs=HOLD_MS, refuse24k=True)
    assert r["audio"]["contextRate"] == 24000 and r["mic"]["rate"] != 24000, r["mic"]
    assert r["errors"] == [], r["errors"]
    [turn] = r["turns"]
    assert_turn(turn, FOX_WORDS)


@pytest.mark.slow
def test_barge_in_silences_playback_at_once(server: ChatServer, scenario: Scenario, fox_wav: str) -> None:
    r = scenario("chat_barge_in", url=server.url, micWav=fox_wav, holdMs=HOLD_MS,
                 playMs=1000, holdAfterMs=1500)
    before, during, after = r["before"], r["during"], r["next"]
    assert before["playing"] and before["output"]["rms"] > 0.02, before["output"]
    barge = during["bargeIn"]
    assert barge["count"] == 1 and barge["source"] == "talk", barge
    # the output was audible until the press and silent within the limit after it
    assert before["now"] <= barge["at"]
    assert during["output"]["lastAudibleAt"] <= barge["at"] + BARGE_IN_LIMIT_MS, during["output"]
    assert barge["stoppedAt"] is not None and barge["stoppedAt"] - barge["at"] < BARGE_IN_LIMIT_MS, barge
    # nothing of the old reply played while the space bar was held
    assert barge["maxRmsAfterStop"] == 0 and not during["playing"] and during["dropping"], during
    assert during["output"]["lastAudibleAt"] < barge["stoppedAt"], during["output"]
    first, second = after["turns"]
    assert first["status"] == "interrupted" and first["final"] is None, first
    assert first["samples24k"] < 24000 * 6, first  # the whole echo is about 7 s
    # the next reply (to a silent turn) starts a new epoch and is played
    assert second["status"] == "done" and second["final"].startswith(ECHO), second
    assert second["samples24k"] > 0, second
    assert after["reply"]["samples24k"] == first["samples24k"] + second["samples24k"], after["reply"]
    assert not after["dropping"] and after["errors"] == [], after


@pytest.mark.slow
def test_hands_free_turn(server: ChatServer, scenario: Scenario, fox_wav: str) -> None:
    """?vad=1: no button is pressed; the server's VAD starts and ends the turn."""
    r = scenario("chat_hands_free", url=server.url, micWav=fox_wav)
    assert r["errors"] == [] and r["mode"] == "handsfree", r
    [socket] = r["sockets"]
    assert "vad=1" in socket and "extras=1" in socket, socket
    assert r["counters"]["starts"] == 0 and r["counters"]["pauses"] == 0, r["counters"]
    events = [e for e in r["vadEvents"] if e != "settings"]
    assert events[:2] == ["speech_started", "speech_stopped"], r["vadEvents"]
    [turn] = r["turns"]
    assert_turn(turn, FOX_WORDS)
    assert r["bargeIn"]["count"] == 0, r["bargeIn"]  # speech before any reply is no barge-in


@pytest.mark.slow
def test_hands_free_barge_in(server: ChatServer, scenario: Scenario, fox_then_hello_wav: str) -> None:
    """Speech over the reply in hands-free mode: the page mutes the reply from its own mic
    level at once, the server's VAD confirms, and the next reply answers the new words."""
    r = scenario("chat_hands_free", url=server.url, micWav=fox_then_hello_wav, bargeIn=True)
    at = r["atBargeIn"]
    barge = at["bargeIn"]
    assert barge["source"] == "mic" and barge["count"] == 1 and barge["falseAlarms"] == 0, barge
    assert barge["stoppedAt"] - barge["at"] < BARGE_IN_LIMIT_MS, barge
    assert "speech_started" in at["vadEvents"][2:], at["vadEvents"]  # the server's confirmation
    assert barge["maxRmsAfterStop"] == 0 and not at["playing"], at
    first, second = r["turns"]
    assert first["status"] == "interrupted" and first["final"] is None, first
    assert {"fox", "dog"} <= words(first["user"]), first
    assert "hello" in words(second["user"]) and second["status"] == "done", second
    assert second["samples24k"] > 24000 and r["errors"] == [], r


@pytest.mark.slow
def test_error_frame_is_shown(server: ChatServer, scenario: Scenario) -> None:
    r = scenario("chat_error", url=server.url, promptChars=16001)
    assert r["state"] == "connected", r  # the server keeps the connection
    [error] = r["errors"]
    assert "system_prompt longer than 16000 characters" in error, r
    assert r["banner"]["visible"] and error in r["banner"]["text"], r
    assert any(error in notice for notice in r["notices"]), r
    assert r["counter"] == "16001 / 16000"


@pytest.mark.slow
def test_reconnects_after_server_restart(server: ChatServer, fox_wav: str,
                                        interactive_scenario: Callable[..., dict[str, Any]]) -> None:
    def stop() -> None:
        assert server.stop() == 0

    r = interactive_scenario("chat_reconnect", {"connected": stop, "dropped": server.start},
                             url=server.url, micWav=fox_wav, holdMs=HOLD_MS)
    dropped, back, final = r["dropped"], r["back"], r["final"]
    assert dropped["closes"][0]["code"] == 1001, dropped["closes"]  # server shutdown
    assert not dropped["micOn"] and dropped["counters"]["connects"] == 1
    assert r["droppedStatus"].startswith("Reconnecting in"), r["droppedStatus"]
    # one notice for the outage however many attempts it took, one for its end
    lost, *rest = r["notices"]
    assert lost.startswith("Connection lost (1001: server shutdown)"), r["notices"]
    assert len(rest) == 1 and rest[0].startswith("Reconnected after"), r["notices"]
    assert back["counters"]["connects"] == 2 and back["state"] == "connected"
    [turn] = final["turns"]
    assert_turn(turn, FOX_WORDS)
    assert final["errors"] == [], final["errors"]  # a refusal while loading is a close reason, not an error
