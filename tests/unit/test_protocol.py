from __future__ import annotations

import json

import pytest

from web_demo.server import protocol
from web_demo.server.errors import ProtocolError
from web_demo.server.protocol import AudioIn, Control, ControlIn, Ignored, MetadataIn, MsgType


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


def test_audio_needs_ogg_pages() -> None:
    assert protocol.decode_binary(b"\x01OggS\x00rest") == AudioIn(b"OggS\x00rest")
    with pytest.raises(ProtocolError, match="not an Ogg page"):
        protocol.decode_binary(b"\x01garbage")
    with pytest.raises(ProtocolError, match="empty audio"):
        protocol.decode_binary(b"\x01")


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
