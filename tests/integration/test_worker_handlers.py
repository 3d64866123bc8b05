"""The real CPU handlers (espeak-ng, faster-whisper tiny.en) behind the worker runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fakes import FAST
from utils.audio import read_wav
from web_demo.server.engines.base import SynthesisRequest, TranscriptionRequest
from web_demo.server.engines.local import WorkerAsrEngine, WorkerTtsEngine
from web_demo.server.errors import BadRequest
from web_demo.server.workers.tts_worker import MAX_TEXT_CHARS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "tests" / "fixtures" / "speech"


async def test_espeak_synthesises_typed_requests() -> None:
    tts = WorkerTtsEngine(cfg=FAST)
    await tts.start()
    try:
        async def samples(request: SynthesisRequest) -> tuple[int, set[int]]:
            chunks = [c async for c in tts.synthesize(request)]
            return sum(len(c.pcm) for c in chunks), {c.sample_rate for c in chunks}

        normal, rates = await samples(SynthesisRequest("The quick brown fox jumps over the dog."))
        assert rates == {24_000} and normal > 24_000
        fast, _ = await samples(SynthesisRequest("The quick brown fox jumps over the dog.", speed=2.0))
        assert fast < 0.7 * normal  # speed maps to espeak's words per minute
        at_16k, rates = await samples(SynthesisRequest("The quick brown fox jumps over the dog.",
                                                       sample_rate=16_000))
        assert rates == {16_000} and abs(at_16k - normal * 2 / 3) < 0.05 * normal
        for request, param in [(SynthesisRequest("hi", voice="en us; rm -rf"), "voice"),
                               (SynthesisRequest("hi", voice="xx-nope"), "voice"),
                               (SynthesisRequest("x" * (MAX_TEXT_CHARS + 1)), "text"),
                               (SynthesisRequest("   "), "text"),
                               (SynthesisRequest("hi", speed=10.0), "speed")]:
            with pytest.raises(BadRequest) as info:
                await samples(request)
            assert info.value.param == param, request
        with pytest.raises(BadRequest, match="does not serve TranscriptionRequest"):
            await tts.worker.call(TranscriptionRequest(read_wav(SPEECH / "fox.wav")[0]))
    finally:
        await tts.aclose()


async def test_faster_whisper_transcribes_with_segments_and_words() -> None:
    asr = WorkerAsrEngine(cfg=FAST, init_kwargs={"device": "auto"})
    await asr.start()
    try:
        assert asr.health()["device"] == "cpu"  # ctranslate2 sees no GPU here
        pcm_16k, rate = read_wav(SPEECH / "fox.wav")
        assert rate == 16_000
        heard = await asr.transcribe(TranscriptionRequest(pcm_16k, language="en",
                                                          word_timestamps=True,
                                                          prompt="A sentence about a fox."))
        assert "fox" in heard.text.lower() and heard.language == "en"
        assert abs(heard.duration_s - len(pcm_16k) / 16_000) < 1e-6
        assert heard.segments and heard.segments[0].words
        words = [w for s in heard.segments for w in s.words]
        assert any("fox" in w.text.lower() for w in words)
        assert all(0 <= w.start_s <= w.end_s <= heard.duration_s + 0.5 for w in words)
        plain = await asr.transcribe(TranscriptionRequest(pcm_16k))
        assert plain.segments and not plain.segments[0].words
        with pytest.raises(BadRequest) as info:
            await asr.transcribe(TranscriptionRequest(pcm_16k, language="fr"))  # tiny.en
        assert info.value.param == "language"
    finally:
        await asr.aclose()


def test_asr_handler_never_imports_torch() -> None:
    """~220 MB and ~1.5 s per (re)spawn, only to learn that there is no GPU."""
    code = textwrap.dedent("""
        import sys
        from web_demo.server.workers.asr_worker import FasterWhisperHandler
        FasterWhisperHandler(device="auto")
        print("torch" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False", result.stderr


def test_killing_a_busy_asr_worker_leaks_no_semaphore() -> None:
    """faster-whisper's tqdm lock was a named semaphore the killed child never unregistered."""
    code = textwrap.dedent("""
        import asyncio, os, signal
        from tests.fakes import FAST, wait_until
        from utils.audio import read_wav
        from web_demo.server.engines.base import TranscriptionRequest
        from web_demo.server.engines.local import WorkerAsrEngine

        async def main():
            asr = WorkerAsrEngine(cfg=FAST, init_kwargs={"device": "cpu"})
            await asr.start()
            pcm = read_wav("tests/fixtures/speech/fox.wav")[0]
            await asr.transcribe(TranscriptionRequest(pcm))
            busy = asyncio.create_task(asr.transcribe(TranscriptionRequest(pcm)))
            await asyncio.sleep(0.05)
            os.kill(asr.health()["pid"], signal.SIGKILL)
            await asyncio.gather(busy, return_exceptions=True)
            await wait_until(lambda: asr.worker.alive)
            await asr.aclose()

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    assert "leaked semaphore" not in result.stderr, result.stderr
