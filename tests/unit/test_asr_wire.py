"""The ASR service's pure parts: languages, form fields, response formats, upload decoding."""

from __future__ import annotations

import pytest

from tests.helpers import speech_file
from web_demo.server import asr_protocol as wire
from web_demo.server.audio_input import AudioLimits, decode_upload, sniff_container
from web_demo.server.engines.base import Segment, Transcription, Word
from web_demo.server.errors import BadRequest, PayloadTooLarge
from web_demo.server.languages import ISO_CODES, parse_language

FOX_S = 2.965


def test_plan_names_and_iso_codes_map_to_the_engine_code_and_answer_as_asked() -> None:
    cases = {"中文": "zh", "英文": "en", "日文": "ja", "粤语": "yue", "韩文": "ko", "英语": "en",
             "zh": "zh", "EN": "en", "yue": "yue", "english": "en", "自动": None, "auto": None, "": None}
    for asked, code in cases.items():
        assert parse_language(asked).code == code, asked
    assert parse_language(None, default="中文").answer("zh") == "中文"
    assert parse_language("自动").answer("en") == "英文"  # auto: the detected one, in the asker's style
    assert parse_language("auto").answer("en") == "en"
    assert parse_language("en").answer("en") == "en"
    for unknown in ("克林贡语", "xx", "english-ish"):
        with pytest.raises(BadRequest) as caught:
            parse_language(unknown)
        assert caught.value.param == "language"


def test_the_language_table_covers_every_code_faster_whisper_knows() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert set(_LANGUAGE_CODES) <= ISO_CODES


def test_hotwords_split_on_ascii_and_full_width_commas() -> None:
    assert wire.parse_hotwords("Fun-Audio-Chat,语音助手") == ("Fun-Audio-Chat", "语音助手")
    assert wire.parse_hotwords(" a ，b、c,, ") == ("a", "b", "c")
    assert wire.parse_hotwords("") == ()
    with pytest.raises(BadRequest):
        wire.parse_hotwords(",".join(["w"] * (wire.MAX_HOTWORDS + 1)))


def test_openai_fields() -> None:
    form = wire.parse_openai_form({
        "model": ["whisper-1"], "response_format": ["verbose_json"], "temperature": ["0.2"],
        "timestamp_granularities[]": ["segment", "word"], "stream": ["true"], "language": ["en"],
        "prompt": ["About a fox."], "hotwords": ["fox,dog"]})
    assert (form.model, form.language.code, form.temperature, form.word_timestamps, form.stream,
            form.prompt, form.hotwords) == ("whisper-1", "en", 0.2, True, True, "About a fox.",
                                            ("fox", "dog"))
    # word timestamps cost time: only verbose_json can show them
    assert not wire.parse_openai_form({"model": ["m"], "timestamp_granularities[]": ["word"]}).word_timestamps
    bad = [({}, "model"), ({"model": ["m"], "response_format": ["xml"]}, "response_format"),
           ({"model": ["m"], "temperature": ["hot"]}, "temperature"),
           ({"model": ["m"], "temperature": ["1.5"]}, "temperature"),
           ({"model": ["m"], "temperature": ["nan"]}, "temperature"),
           ({"model": ["m"], "stream": ["maybe"]}, "stream"),
           ({"model": ["m"], "timestamp_granularities[]": ["char"]}, "timestamp_granularities[]"),
           ({"model": ["m", "n"]}, "model")]
    for fields, param in bad:
        with pytest.raises(BadRequest) as caught:
            wire.parse_openai_form(fields)
        assert caught.value.param == param, fields


TWO_SEGMENTS = Transcription(
    text="Hello there. 你好世界", language="en", duration_s=3.2,
    segments=(Segment(0.0, 1.5, "Hello there.", words=(Word(0.0, 0.6, "Hello"), Word(0.7, 1.4, "there."))),
              Segment(1.5, 3.9, "你好世界")))  # Whisper may end a segment past the audio


def test_subtitles_and_verbose_json() -> None:
    assert wire.srt_text(TWO_SEGMENTS) == ("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
                                           "2\n00:00:01,500 --> 00:00:03,200\n你好世界\n\n")
    assert wire.vtt_text(TWO_SEGMENTS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
                                           "00:00:01.500 --> 00:00:03.200\n你好世界\n\n")
    body = wire.verbose_json_body(TWO_SEGMENTS, temperature=0.0, words=True)
    assert body["language"] == "english" and body["duration"] == 3.2 and body["task"] == "transcribe"
    assert [s["end"] for s in body["segments"]] == [1.5, 3.2]
    assert body["words"][1] == {"word": "there.", "start": 0.7, "end": 1.4}
    assert body["usage"] == {"type": "duration", "seconds": 4}
    assert "words" not in wire.verbose_json_body(TWO_SEGMENTS, temperature=0.0, words=False)
    hours = Transcription("x", "en", 4000.0, segments=(Segment(3723.4567, 3724.0, "x"),))
    assert "01:02:03,457 --> 01:02:04,000" in wire.srt_text(hours)


def test_stream_deltas_join_to_the_final_text() -> None:
    assert wire.text_deltas(TWO_SEGMENTS) == ["Hello there.", " 你好世界"]
    odd = Transcription("A b c", None, 1.0, segments=(Segment(0, 1, "not in the text"),))
    assert wire.text_deltas(odd) == ["A b c"]
    events = wire.stream_events(TWO_SEGMENTS)
    assert events[0] == b'data: {"type": "transcript.text.delta", "delta": "Hello there."}\n\n'
    done = 'data: {"type": "transcript.text.done", "text": "Hello there. 你好世界"}\n\n'
    assert events[-1] == done.encode()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "webm", "m4a", "aac"])
def test_every_upload_format_decodes_to_16k_mono(fmt: str) -> None:
    audio = decode_upload(speech_file("fox", fmt))
    assert audio.pcm_16k.ndim == 1 and audio.pcm_16k.dtype.name == "float32"
    assert abs(audio.duration_s - FOX_S) < 0.1, (fmt, audio.duration_s)  # encoder padding only


def test_bad_uploads_are_400_or_413_naming_the_field() -> None:
    wav = speech_file("fox", "wav")
    hls = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    for data, words in [(b"", "empty"), (wav[:30], "could not decode"), (b"not audio " * 100, "could not"),
                        (hls, "not a recognised format"), (speech_file("fox", "webm")[:300], "could not")]:
        with pytest.raises(BadRequest) as caught:
            decode_upload(data, param="audio")
        assert type(caught.value) is BadRequest and caught.value.param == "audio"
        assert words in str(caught.value), (data[:20], caught.value)
    for fmt in ("wav", "webm"):  # libsndfile and PyAV both stop at the duration limit
        with pytest.raises(PayloadTooLarge, match="limit is 2 s"):
            decode_upload(speech_file("fox", fmt), limits=AudioLimits(max_seconds=2.0))
    with pytest.raises(PayloadTooLarge):
        decode_upload(wav, limits=AudioLimits(max_bytes=len(wav) - 1))
    # A wav cut inside its data decodes up to the cut, as players do.
    assert 0 < decode_upload(wav[: len(wav) // 2]).duration_s < FOX_S
    assert sniff_container(b"ID3\x04") == "mp3" and sniff_container(hls) is None
