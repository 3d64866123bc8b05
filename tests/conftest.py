from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from tests.fakes import FakeEngine
from web_demo.chat_client import ChatClient
from web_demo.server.config import ServerConfig, SessionConfig
from web_demo.server.server import make_app

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
