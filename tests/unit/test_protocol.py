from __future__ import annotations

import json

import numpy as np
import pytest

from utils.opus import encode_browser_pages
from web_demo.server import protocol
from web_demo.server.errors import ProtocolError
from web_demo.server.protocol import AudioIn, Control, ControlIn, Ignored, MetadataIn, MsgType


def tone_pages(seconds: float) -> list[bytes]:
    t = np.arange(int(seconds * 24000)) / 24000
    return encode_browser_pages((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))


def test_handshake_is_type_version_model() -> None:
    assert protocol.HANDSHAKE_FRAME == b"\x00\x00\x00"


@pytest.mark.parametrize("action", list(Control))
def test_binary_control_round_trip(action: Control) -> None:
    assert protocol.decode_binary(protocol.encode_control(action)) == ControlIn(action)


@pytest.mark.parametrize("name,action", [("start", Control.START), ("endTurn", Control.END_TURN),
                                         ("pause", Control.PAUSE), ("restart", Control.RESTART)])
def test_json_control(name: str, action: Control) -> None:
    assert protocol.decode_text(json.dumps({"type": "control", "action": name})) == ControlIn(action)


def test_metadata_binary_and_json() -> None:
    data = {"system_prompt": "Be brief. 简短"}
    assert protocol.decode_binary(b"\x04" + json.dumps(data).encode()) == MetadataIn(data)
    assert protocol.decode_text(json.dumps({"type": "metadata", "data": data})) == MetadataIn(data)


def test_audio_needs_whole_ogg_pages() -> None:
    pages = tone_pages(0.2)
    frame = b"".join(pages[2:4])
    assert protocol.decode_binary(b"\x01" + frame) == AudioIn(frame)
    for bad, reason in [(b"garbage", "no Ogg page"), (b"OggS\x00rest", "no Ogg page"),
                        (b"OggS\x01" + bytes(60), "unsupported Ogg version"),
                        (pages[3][:40], "truncated Ogg page"), (pages[3][:27], "truncated Ogg page"),
                        (pages[2] + pages[3][:-1], "truncated Ogg page")]:
        with pytest.raises(ProtocolError, match=reason):
            protocol.decode_binary(b"\x01" + bad)
    with pytest.raises(ProtocolError, match="empty audio"):
        protocol.decode_binary(b"\x01")


@pytest.mark.parametrize("payload, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"n": ' + b"9" * 5000 + b"}", "not acceptable JSON"),
])
def test_hostile_json_is_a_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode_binary(b"\x04" + payload)


@pytest.mark.parametrize("action", [["start"], {"a": 1}, 3, None])
def test_control_action_of_the_wrong_type_is_a_protocol_error(action: object) -> None:
    with pytest.raises(ProtocolError, match="unknown control action"):
        protocol.decode_text(json.dumps({"type": "control", "action": action}))


@pytest.mark.parametrize("kind", [MsgType.PING, MsgType.TEXT, MsgType.HANDSHAKE])
def test_client_frames_that_are_accepted_and_ignored(kind: MsgType) -> None:
    assert protocol.decode_binary(bytes([kind]) + b"x") == Ignored(kind)


@pytest.mark.parametrize("frame,reason", [
    (b"", "empty frame"),
    (b"\x09abc", "unknown frame type 0x09"),
    (b"\x03", "exactly one byte"),
    (b"\x03\x00\x01", "exactly one byte"),
    (b"\x03\x07", "unknown control code 0x07"),
    (b"\x04{not json", "not valid JSON"),
    (b"\x04\xff\xfe", "not valid UTF-8"),
    (b"\x04[1, 2]", "must be an object"),
    (b"\x05oops", "server-to-client only"),
])
def test_malformed_binary_frames(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode_binary(frame)


@pytest.mark.parametrize("text,reason", [
    ("{", "not valid JSON"),
    ('{"type": "control", "action": "jump"}', "unknown control action"),
    ('{"type": "metadata", "data": "x"}', "must be a JSON object"),
    ('{"type": "dance"}', "unknown JSON message type"),
])
def test_malformed_json_frames(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode_text(text)


def test_server_frames() -> None:
    assert protocol.encode_text("héllo") == b"\x02" + "héllo".encode()
    assert protocol.encode_error("bad") == b"\x05bad"
    assert protocol.encode_ping() == b"\x06"
    assert protocol.encode_audio(b"OggS") == b"\x01OggS"
    assert json.loads(protocol.encode_metadata({"a": 1})[1:]) == {"a": 1}
