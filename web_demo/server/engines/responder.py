"""Responders: the text brain between ASR and TTS in the cascade engine.

EchoResponder answers with what it heard (no LLM needed). OpenAIChatResponder streams from
any OpenAI-compatible /chat/completions endpoint (vLLM, llama.cpp, a hosted API).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from web_demo.server.errors import EngineError

logger = logging.getLogger(__name__)

UNHEARD = "(inaudible)"


@dataclass(frozen=True)
class ChatTurn:
    """One finished exchange as text: what was heard, and what of the reply was heard."""
    user: str
    assistant: str


class Responder(Protocol):
    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def respond(self, system_prompt: str | None, history: Sequence[ChatTurn],
                user_text: str) -> AsyncGenerator[str, None]:
        """Streams the reply text in pieces (an async generator; close it to stop)."""
        ...

    def health(self) -> dict[str, Any]: ...


class EchoResponder:
    name = "echo"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def respond(self, system_prompt: str | None, history: Sequence[ChatTurn],
                      user_text: str) -> AsyncGenerator[str, None]:
        if user_text:
            yield f"Echo mode, no language model configured. You said: {user_text}"
        else:
            yield "Echo mode, no language model configured. I did not hear any words."

    def health(self) -> dict[str, Any]:
        return {"responder": "echo (no --llm-url given: replies repeat what was heard)"}


class OpenAIChatResponder:
    """Streams chat completions; history comes from the session's transcripts."""

    name = "openai-chat"

    def __init__(self, *, base_url: str, model: str | None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_tokens: int = 256) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)
        self._max_tokens = max_tokens
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    def health(self) -> dict[str, Any]:
        return {"responder": f"openai-chat {self._url} model={self._model}"}

    async def respond(self, system_prompt: str | None, history: Sequence[ChatTurn],
                      user_text: str) -> AsyncGenerator[str, None]:
        assert self._http is not None, "start() first"
        body = {"model": self._model, "messages": chat_messages(system_prompt, history, user_text),
                "stream": True, "max_tokens": self._max_tokens}
        try:
            async with self._http.post(self._url, json=body) as response:
                if response.status != 200:
                    detail = (await response.text())[:300]
                    raise EngineError(f"LLM answered HTTP {response.status}: {detail}",
                                      retryable=response.status >= 500 or response.status == 429)
                async with contextlib.aclosing(_sse_deltas(response)) as pieces:
                    async for piece in pieces:
                        yield piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"LLM unreachable at {self._url}: {exc!r}", retryable=True) from exc


def chat_messages(system_prompt: str | None, history: Sequence[ChatTurn],
                  user_text: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in history:
        messages.append({"role": "user", "content": turn.user or UNHEARD})
        messages.append({"role": "assistant", "content": turn.assistant})
    messages.append({"role": "user", "content": user_text or UNHEARD})
    return messages


async def _sse_deltas(response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
    """Parses `data: {...}` server-sent events into content deltas."""
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            choices = json.loads(data).get("choices") or [{}]
        except json.JSONDecodeError:
            raise EngineError(f"LLM sent an invalid stream event: {data[:100]!r}") from None
        piece = (choices[0].get("delta") or {}).get("content")
        if piece:
            yield piece
