from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # spawned worker processes inherit sys.path
    sys.path.insert(0, str(ROOT))

from tests.fakes import FakeEngine  # noqa: E402
from web_demo.chat_client import ChatClient  # noqa: E402
from web_demo.server.config import ServerConfig, SessionConfig  # noqa: E402
from web_demo.server.server import make_app  # noqa: E402

ChatFactory = Callable[..., Awaitable[tuple[Any, Callable[..., Awaitable[ChatClient]]]]]


@pytest.fixture
def chat_server(aiohttp_client: Any) -> ChatFactory:
    """Starts the real app with a given engine; returns (test client, connect())."""

    async def start(engine: Any = None, *, session: dict[str, Any] | None = None,
                    **server: Any) -> tuple[Any, Callable[..., Awaitable[ChatClient]]]:
        engine = engine or FakeEngine()
        session_cfg = replace(SessionConfig(), **(session or {}))
        cfg = replace(ServerConfig(), session=session_cfg, **server)
        client = await aiohttp_client(make_app(cfg, engine=engine))

        async def connect(query: str = "", handshake: bool = True) -> ChatClient:
            ws = await client.ws_connect("/api/chat" + query)
            chat = ChatClient(ws)
            if handshake:
                assert await chat.handshake() == b"\x00\x00\x00"
            return chat

        return client, connect

    return start
