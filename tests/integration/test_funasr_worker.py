"""FunAsrNanoHandler on tiny random-weight Fun-ASR-Nano and -MLT-Nano directories, through the
real funasr AutoModel: the text is random, the way there is real (prompt, languages, device)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Qwen2TokenizerFast

from tests.fun_asr_nano_tiny import build_fun_asr_nano_tiny
from utils.audio import read_wav
from web_demo.server.engines.base import SynthesisRequest, Transcription, TranscriptionRequest
from web_demo.server.errors import BadRequest
from web_demo.server.workers.funasr_worker import MLT_NANO_LANGUAGES, FunAsrNanoHandler, absolute_paths

pytestmark = pytest.mark.slow
SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
HOTWORD_PROMPT = ("请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n"
                  "**上下文信息：**\n\n\n热词列表：[Fun-Audio-Chat, 语音助手]\n语音转写成中文：")


@pytest.fixture(scope="module")
def nano_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fun_asr_nano_tiny(tmp_path_factory.mktemp("nano") / "Fun-ASR-Nano-2512")


@pytest.fixture(scope="module")
def nano(nano_dir: Path) -> FunAsrNanoHandler:
    # cuda:0 as the deployment plan asks; the repository root (the cwd) has no Qwen3-0.6B/ and
    # no multilingual.tiktoken, so this loads only if the handler gives funasr absolute paths.
    return FunAsrNanoHandler(model_dir=str(nano_dir), device="cuda:0")


@pytest.fixture(scope="module")
def mlt_nano(nano_dir: Path) -> FunAsrNanoHandler:
    mlt_dir = shutil.copytree(nano_dir, nano_dir.parent / "Fun-ASR-MLT-Nano-2512")
    return FunAsrNanoHandler(model_dir=str(mlt_dir), device="cpu")


@pytest.fixture
def llm_inputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every text funasr tokenizes for the LLM (the chat turns around the audio)."""
    seen: list[str] = []
    encode = Qwen2TokenizerFast.encode

    def spy(self: Qwen2TokenizerFast, text: str, *args: object, **kwargs: object) -> list[int]:
        seen.append(text)
        return encode(self, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Qwen2TokenizerFast, "encode", spy)
    yield seen


def transcribe(handler: FunAsrNanoHandler, request: TranscriptionRequest) -> Transcription:
    results = list(handler.handle(request))
    assert len(results) == 1 and isinstance(results[0], Transcription)
    return results[0]


def user_turn(llm_inputs: list[str]) -> str:
    """The user's text before the audio: the prompt funasr built."""
    turns = [t for t in llm_inputs if "<|im_start|>user\n" in t]
    assert len(turns) == 1, llm_inputs
    return turns[0].rpartition("<|im_start|>user\n")[2]


def test_config_paths_are_made_absolute(nano_dir: Path) -> None:
    config = yaml.safe_load((nano_dir / "config.yaml").read_text())
    assert config["llm_conf"]["init_param_path"] == "Qwen3-0.6B"  # relative, as released
    assert absolute_paths(nano_dir, config) == {
        "llm_conf": {"init_param_path": str(nano_dir / "Qwen3-0.6B")},
        "tokenizer_conf": {"init_param_path": str(nano_dir / "Qwen3-0.6B")},
        "dataset_conf": {"ctc_tokenizer_conf": {"vocab_path": str(nano_dir / "multilingual.tiktoken")}}}


def test_info_reports_where_the_weights_are(nano: FunAsrNanoHandler) -> None:
    info = nano.info()
    assert info["model"] == "Fun-ASR-Nano-2512" and info["languages"] == 3
    # Asked cuda:0: funasr falls back to the CPU without a usable GPU, and info says so.
    assert info["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_transcribes_with_language_and_hotwords_in_the_prompt(nano: FunAsrNanoHandler,
                                                              llm_inputs: list[str]) -> None:
    pcm_16k, _ = read_wav(SPEECH / "hello.wav")
    t = transcribe(nano, TranscriptionRequest(pcm_16k, language="zh",
                                              hotwords=("Fun-Audio-Chat", "语音助手")))
    assert user_turn(llm_inputs) == HOTWORD_PROMPT  # hotwords as a list, not per character
    assert isinstance(t.text, str) and t.text and t.text == t.text.strip()
    assert t.language == "zh" and t.duration_s == pytest.approx(len(pcm_16k) / 16_000)
    assert [(s.start_s, s.end_s, s.text) for s in t.segments] == [(0.0, t.duration_s, t.text)]


def test_auto_language_names_no_language(nano: FunAsrNanoHandler, llm_inputs: list[str]) -> None:
    pcm_16k, _ = read_wav(SPEECH / "fox.wav")
    t = transcribe(nano, TranscriptionRequest(pcm_16k))
    assert user_turn(llm_inputs) == "语音转写："
    assert t.language is None


@pytest.mark.parametrize("code, name", [("en", "英文"), ("ja", "日文")])
def test_nano_languages_map_to_the_prompt_names(nano: FunAsrNanoHandler, llm_inputs: list[str],
                                                code: str, name: str) -> None:
    transcribe(nano, TranscriptionRequest(read_wav(SPEECH / "fox.wav")[0], language=code))
    assert user_turn(llm_inputs) == f"语音转写成{name}："


@pytest.mark.parametrize("code", ["ko", "yue", "fr", "xx"])
def test_nano_refuses_languages_it_does_not_take(nano: FunAsrNanoHandler, llm_inputs: list[str],
                                                 code: str) -> None:
    with pytest.raises(BadRequest, match="zh, en, ja") as info:
        transcribe(nano, TranscriptionRequest(read_wav(SPEECH / "fox.wav")[0], language=code))
    assert info.value.param == "language"
    assert llm_inputs == []  # refused before the model runs


def test_mlt_nano_takes_its_31_languages(mlt_nano: FunAsrNanoHandler, llm_inputs: list[str]) -> None:
    assert mlt_nano.info()["languages"] == len(MLT_NANO_LANGUAGES) == 31
    pcm_16k = read_wav(SPEECH / "fox.wav")[0]
    for code, name in [("ko", "韩文"), ("yue", "粤语"), ("tl", "菲律宾语"), ("ga", "爱尔兰语")]:
        llm_inputs.clear()
        assert transcribe(mlt_nano, TranscriptionRequest(pcm_16k, language=code)).language == code
        assert user_turn(llm_inputs) == f"语音转写成{name}："
    with pytest.raises(BadRequest) as info:
        transcribe(mlt_nano, TranscriptionRequest(pcm_16k, language="fr"))
    assert info.value.param == "language"


def test_bad_inputs(nano: FunAsrNanoHandler) -> None:
    pcm_16k = read_wav(SPEECH / "fox.wav")[0]
    with pytest.raises(BadRequest) as info:
        transcribe(nano, TranscriptionRequest(pcm_16k, word_timestamps=True))
    assert info.value.param == "timestamp_granularities[]"
    with pytest.raises(BadRequest) as info:
        transcribe(nano, TranscriptionRequest(pcm_16k.reshape(2, -1)))
    assert info.value.param == "pcm_16k"
    with pytest.raises(BadRequest, match="does not serve SynthesisRequest"):
        list(nano.handle(SynthesisRequest("hi")))
    # Shorter than one fbank window: nothing to hear, no model call to crash.
    tiny = transcribe(nano, TranscriptionRequest(pcm_16k[:100], language="zh"))
    assert (tiny.text, tiny.segments) == ("", ())


def test_a_missing_directory_fails_before_funasr_looks_for_it_on_a_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.yaml is missing"):
        FunAsrNanoHandler(model_dir=str(tmp_path / "FunAudioLLM" / "Fun-ASR-Nano-2512"))
