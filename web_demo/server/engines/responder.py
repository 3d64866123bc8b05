"""Responders: the text brain between ASR and TTS in the cascade engine.

EchoResponder answers with what it heard (no LLM needed). OpenAIChatResponder streams from
any OpenAI-compatible /chat/completions endpoint (vLLM, llama.cpp, a hosted API); tools go
through to it, and the calls it streams back come out as ToolCall items.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from web_demo.server.engines.base import Tool, ToolCall, ToolResult
from web_demo.server.errors import EngineError

logger = logging.getLogger(__name__)

UNHEARD = "(inaudible)"


@dataclass(frozen=True)
class ChatTurn:
    """One finished exchange as text: what was heard (or the tool results the turn carried),
    and what of the reply was heard (or the calls it made)."""
    user: str
    assistant: str
    tool_results: tuple[ToolResult, ...] = ()  # the turn's input instead of speech
    tool_calls: tuple[ToolCall, ...] = ()


ReplyPiece = str | ToolCall  # reply text, or a call the model makes


class Responder(Protocol):
    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def respond(self, system_prompt: str | None, history: Sequence[ChatTurn], user_text: str, *,
                tools: Sequence[Tool] = (), tool_results: Sequence[ToolResult] = (),
                temperature: float | None = None,
                max_tokens: int | None = None) -> AsyncGenerator[ReplyPiece, None]:
        """Streams the reply text in pieces, and the calls of `tools` the model makes (an
        async generator; close it to stop). With `tool_results` they are the turn's input.
        `temperature`: the client's sampling temperature; None: the LLM's own. `max_tokens`:
        the client's cap on the reply, under the responder's own."""
        ...

    def health(self) -> dict[str, Any]: ...


class EchoResponder:
    name = "echo"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def respond(self, system_prompt: str | None, history: Sequence[ChatTurn], user_text: str, *,
                      tools: Sequence[Tool] = (), tool_results: Sequence[ToolResult] = (),
                      temperature: float | None = None,
                      max_tokens: int | None = None) -> AsyncGenerator[ReplyPiece, None]:
        if tool_results:
            yield "Echo mode, no language model configured. The tool said: " + "; ".join(
                r.output for r in tool_results)
        elif user_text:
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

    async def respond(self, system_prompt: str | None, history: Sequence[ChatTurn], user_text: str, *,
                      tools: Sequence[Tool] = (), tool_results: Sequence[ToolResult] = (),
                      temperature: float | None = None,
                      max_tokens: int | None = None) -> AsyncGenerator[ReplyPiece, None]:
        assert self._http is not None, "start() first"
        body: dict[str, Any] = {
            "model": self._model, "stream": True,
            "max_tokens": self._max_tokens if max_tokens is None else min(max_tokens, self._max_tokens),
            "messages": chat_messages(system_prompt, history, user_text, tool_results)}
        if temperature is not None:
            body["temperature"] = temperature
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description,
                "parameters": t.parameters or {"type": "object", "properties": {}}}} for t in tools]
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


def chat_messages(system_prompt: str | None, history: Sequence[ChatTurn], user_text: str,
                  tool_results: Sequence[ToolResult] = ()) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in history:
        messages += _turn_input(turn.user, turn.tool_results)
        if turn.tool_calls:
            messages.append({"role": "assistant", "content": turn.assistant or None, "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in turn.tool_calls]})
        else:
            messages.append({"role": "assistant", "content": turn.assistant})
    return messages + _turn_input(user_text, tool_results)


def _turn_input(user_text: str, tool_results: Sequence[ToolResult]) -> list[dict[str, Any]]:
    if tool_results:
        return [{"role": "tool", "tool_call_id": r.call_id, "content": r.output} for r in tool_results]
    return [{"role": "user", "content": user_text or UNHEARD}]


async def _sse_deltas(response: aiohttp.ClientResponse) -> AsyncGenerator[ReplyPiece, None]:
    """Parses `data: {...}` server-sent events into content deltas, and the tool calls
    streamed in pieces (by index) into whole ToolCalls once the stream ends."""
    calls: dict[int, dict[str, str]] = {}
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        try:
            choices = json.loads(data).get("choices") or [{}]
        except json.JSONDecodeError:
            raise EngineError(f"LLM sent an invalid stream event: {data[:100]!r}") from None
        delta = choices[0].get("delta") or {}
        for part in delta.get("tool_calls") or ():
            _add_call_part(calls, part)
        if piece := delta.get("content"):
            yield piece
    for call in calls.values():
        yield ToolCall(call["id"] or f"call_{len(calls)}", call["name"], call["arguments"] or "{}")


def _add_call_part(calls: dict[int, dict[str, str]], part: dict[str, Any]) -> None:
    call = calls.setdefault(int(part.get("index", len(calls))), {"id": "", "name": "", "arguments": ""})
    function = part.get("function") or {}
    call["id"] = part.get("id") or call["id"]
    call["name"] += function.get("name") or ""
    call["arguments"] += function.get("arguments") or ""
