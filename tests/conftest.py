from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import fields, replace
from typing import Any

import pytest

from tests.fakes import FakeEngine
from web_demo.chat_client import ChatClient
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import ChatConfig, HttpConfig

ChatFactory = Callable[..., Awaitable[tuple[Any, Callable[..., Awaitable[ChatClient]]]]]
_CHAT_FIELDS = {f.name for f in fields(ChatConfig)}


@pytest.fixture
def chat_server(aiohttp_client: Any) -> ChatFactory:
    """Starts the real app with a given engine; returns (test client, connect()).

    Keyword arguments are ChatConfig or HttpConfig fields, e.g. max_sessions=2, api_key="k".
    """

    async def start(engine: Any = None, *, wait_ready: bool = True,
                    **options: Any) -> tuple[Any, Callable[..., Awaitable[ChatClient]]]:
        engine = engine or FakeEngine()
        chat = replace(ChatConfig(), **{k: v for k, v in options.items() if k in _CHAT_FIELDS})
        http = replace(HttpConfig(), **{k: v for k, v in options.items() if k not in _CHAT_FIELDS})
        app = make_app(http, s2s=engine, chat=chat)
        client = await aiohttp_client(app)
        if wait_ready:
            await asyncio.wait_for(app[LIFECYCLE].started.wait(), 60)

        async def connect(query: str = "", handshake: bool = True, compress: int = 0) -> ChatClient:
            ws = await client.ws_connect("/api/chat" + query, compress=compress)
            chat = ChatClient(ws)
            if handshake:
                assert await chat.handshake() == b"\x00\x00\x00"
            return chat

        return client, connect

    return start
