"""/v1/realtime end to end: the real server as a subprocess with the CPU cascade engine
(ASR -> echo -> TTS), the real `openai` SDK as the client.

A spoken turn goes in as PCM16 in real-time-ish chunks and server VAD ends it; the reply
audio, transcribed by faster-whisper, must contain the words that were spoken, and the
server's transcript of the user's audio must have heard them too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import RunningServer
from tests.e2e.test_cascade_e2e import words
from tests.helpers import speech_24k
from tests.realtime_helpers import append_audio, collect, connect, is_done, is_type, rms, with_silence
from utils.audio import WIRE_SAMPLE_RATE, write_wav_atomic

pytestmark = pytest.mark.slow
ECHOED = {"quick", "brown", "fox", "jumps", "over", "lazy", "dog"}  # what fox.wav says


def transcribe(wav: Path) -> str:
    """whisper-base with a beam of 5: whisper-tiny hears espeak-ng's "brown fox jumps" as
    "roundfoc stump" (so it does for espeak-ng's own output, not only ours), on some CPUs
    even with the beam (its int8 kernels differ by instruction set)."""
    from faster_whisper import WhisperModel

    from web_demo.server.workers.whisper_models import stand_in_dir

    model = WhisperModel(stand_in_dir("whisper-base"), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(str(wav), beam_size=5, language="en")
    return " ".join(segment.text for segment in segments)


async def test_a_server_vad_voice_turn_is_echoed_back_in_speech(
        cascade_server: RunningServer, tmp_path: Path) -> None:
    async with connect(cascade_server.port) as conn:
        created = await collect(conn, is_type("session.created"), timeout=10)
        assert created.one("session.created").session.audio.input.turn_detection.type == "server_vad"
        await append_audio(conn, with_silence(speech_24k("fox"), lead_s=0.5, tail_s=1.5), speed=2)
        got = await collect(conn, is_done(), timeout=120)
    assert got.in_order("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "response.created"), got.types()
    assert got.errors() == []
    (done,) = got.done()
    assert done.status == "completed", done
    heard = got.one("conversation.item.input_audio_transcription.completed")
    assert heard.item_id == got.one("input_audio_buffer.committed").item_id
    assert "fox" in words(heard.transcript), heard.transcript
    reply = got.pcm16()
    assert len(reply) > WIRE_SAMPLE_RATE and rms(reply) > 0.01  # speech, not silence
    out = tmp_path / "reply.wav"
    write_wav_atomic(str(out), reply.astype(np.float32), WIRE_SAMPLE_RATE)
    heard_back = words(transcribe(out))
    assert {"echo", "mode", "said"} <= heard_back, heard_back  # the reply's own words...
    assert len(ECHOED & heard_back) >= 4, (ECHOED, heard_back)  # ...and the user's, echoed
    # the reply's transcript is what the server spoke: the user's words, every one
    assert words(got.transcript()) >= ECHOED, got.transcript()
