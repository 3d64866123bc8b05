"""The sampling settings upstream's browser client puts in its /api/simplex query string."""

from __future__ import annotations

import pytest

from web_demo.server.engines.base import SamplingOptions
from web_demo.server.errors import BadRequest
from web_demo.server.sampling_query import sampling_from_query

UPSTREAM_QUERY = {  # what upstream's client sends with its default settings
    "text_temperature": "0.7", "text_topk": "25", "audio_temperature": "0.8", "audio_topk": "250",
    "pad_mult": "0", "repetition_penalty_context": "64", "repetition_penalty": "1",
    "text_seed": "776919", "audio_seed": "278161",
}


def test_upstream_defaults_are_read_as_they_are() -> None:
    assert sampling_from_query(UPSTREAM_QUERY) == SamplingOptions(
        text_temperature=0.7, text_top_k=25, speech_temperature=0.8, speech_top_k=250,
        text_seed=776919, speech_seed=278161, repetition_penalty=1.0, repetition_window=64)


def test_no_sampling_parameters_leave_the_engine_its_own() -> None:
    assert sampling_from_query({}) is None
    assert sampling_from_query({"extras": "1", "api_key": "k", "pad_mult": "3"}) is None
    assert sampling_from_query({"text_topk": ""}) is None


@pytest.mark.parametrize("name,raw,field,value", [
    ("text_temperature", "9", "text_temperature", 2.0),
    ("audio_temperature", "-1", "speech_temperature", 0.0),
    ("text_topk", "100000", "text_top_k", 1000),
    ("audio_topk", "-5", "speech_top_k", 0),
    ("repetition_penalty", "0.5", "repetition_penalty", 1.0),
    ("repetition_penalty", "7", "repetition_penalty", 2.0),
    ("repetition_penalty_context", "0", "repetition_window", 1),
    ("repetition_penalty_context", "1e9", "repetition_window", 4096),
    ("text_seed", "-1", "text_seed", None),  # moshi's "random seed"
    ("audio_seed", "12.0", "speech_seed", 12),
    ("text_temperature", "inf", "text_temperature", 2.0),
])
def test_out_of_range_values_are_clamped(name: str, raw: str, field: str, value: object) -> None:
    options = sampling_from_query({name: raw})
    assert options is not None and getattr(options, field) == value


@pytest.mark.parametrize("name,raw,message", [
    ("text_temperature", "hot", "must be a number"),
    ("text_temperature", "nan", "must be a number"),
    ("text_topk", "2.5", "must be an integer"),
    ("audio_seed", "inf", "must be an integer"),
    ("audio_topk", "9" * 40, "too long"),
])
def test_values_that_are_not_numbers_are_refused(name: str, raw: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        sampling_from_query({name: raw})
    assert caught.value.param == name
