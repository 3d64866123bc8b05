"""Fun-Audio-Chat engine: the native runtime with batched decoding, plus the vocoder worker.

Data path of one reply: user PCM 16 kHz -> Scheduler (all sessions decode together in its
thread) -> per LLM step: a text piece and 5 speech tokens -> CosyVoice3 worker stream of
this reply -> PCM 24 kHz. Each session keeps a ConversationState (history + KV caches) here,
so a new turn only prefills its new tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web_demo.server.engines.base import (
    AudioDelta, QueuePosition, ReplyEvent, ReplyRequest, TextDelta)
from web_demo.server.engines.local import WorkerVocoder
from web_demo.server.errors import EngineDead, EngineError

logger = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0  # a cancelled turn leaves the batch at the scheduler's next step


@dataclass
class _Conversation:
    state: Any  # utils.funaudiochat.ConversationState, touched only while no turn runs
    handle: Any = None  # TurnHandle of the latest turn
    interrupted: bool = False  # the latest reply did not complete (barge-in, error, gone)


class FunAudioChatEngine:
    name = "funaudiochat"

    def __init__(self, *, model_path: Path, tokenizer_path: Path | None, device: str,
                 vocoder: WorkerVocoder, history_turns: int = 8, max_batch: int = 32,
                 sampling: Any = None) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._device = device
        self._vocoder = vocoder
        self._history_turns = history_turns
        self._max_batch = max_batch
        self._sampling = sampling
        self._runtime: Any = None
        self._scheduler: Any = None
        self._conversations: dict[str, _Conversation] = {}

    async def start(self) -> None:
        from utils.funaudiochat import SamplingParams, Scheduler, load_model

        self._runtime = await asyncio.to_thread(
            load_model, self._model_path, tokenizer_path=self._tokenizer_path, device=self._device)
        self._sampling = self._sampling or SamplingParams()
        self._scheduler = Scheduler(self._runtime, max_batch=self._max_batch)
        self._scheduler.start()
        await self._vocoder.start()

    async def aclose(self) -> None:
        await self._vocoder.aclose()
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        from utils.funaudiochat import UserTurn

        if self._scheduler is None:
            raise EngineDead("the Fun-Audio-Chat engine is not started")
        conversation = await self._conversation(request)
        try:
            handle = self._scheduler.submit(conversation.state, UserTurn(audio=request.user_audio_16k),
                                            self._sampling, mode="s2s")
        except RuntimeError as exc:
            raise EngineError(f"cannot start the turn: {exc}", retryable=True) from exc
        conversation.handle, conversation.interrupted = handle, True  # until it completes
        voice = self._vocoder.open_stream()  # this reply's vocoder state, in the worker
        try:
            position = self._scheduler.queue_position(handle)
            if position is not None and self._scheduler.num_active >= self._max_batch:
                yield QueuePosition(position)  # every batch slot is taken: say how long the line is
            async for step in handle:
                if step.text_piece:
                    yield TextDelta(step.text_piece)
                if step.speech_tokens:
                    for pcm_24k in await voice.push(step.speech_tokens):
                        yield AudioDelta(pcm_24k)
            for pcm_24k in await voice.finish():
                yield AudioDelta(pcm_24k)
            conversation.interrupted = False
        finally:
            if conversation.interrupted:  # barge-in, client gone or a failure: stop both halves
                handle.cancel()
            await voice.aclose()  # a no-op after finish()

    async def _conversation(self, request: ReplyRequest) -> _Conversation:
        """The session's state, brought in line with the history the session kept."""
        from utils.funaudiochat import ConversationState

        conversation = self._conversations.get(request.session_id)
        if conversation is not None and conversation.handle is not None:
            done = conversation.handle.done
            if not await asyncio.to_thread(done.wait, CANCEL_WAIT_S):
                raise EngineError("the previous turn did not stop in time", retryable=True)
        if conversation is not None and not request.history:  # new or restarted session
            conversation.state.close()
            conversation = None
        if conversation is None:
            conversation = _Conversation(ConversationState(
                system_prompt=request.system_prompt, max_user_turns=self._history_turns + 1))
            self._conversations[request.session_id] = conversation
            if request.history:  # e.g. the engine restarted mid-conversation
                await asyncio.to_thread(self._rebuild, conversation.state, request)
            return conversation
        state = conversation.state
        if request.system_prompt != state.system_prompt:
            state.set_system_prompt(request.system_prompt)
        if conversation.interrupted:  # keep only what the listener heard of the last reply
            state.set_last_reply(request.history[-1].assistant_text)
            conversation.interrupted = False
        return conversation

    def _rebuild(self, state: Any, request: ReplyRequest) -> None:
        from utils.funaudiochat import UserTurn

        for turn in request.history:
            state.add_user_message(self._runtime, UserTurn(audio=turn.user_audio_16k))
            state.add_assistant_message(turn.assistant_text)

    def end_session(self, session_id: str) -> None:
        conversation = self._conversations.pop(session_id, None)
        if conversation is None:
            return
        if conversation.handle is not None and not conversation.handle.done.is_set():
            conversation.handle.cancel()  # the scheduler frees the caches when it drops the row
        else:
            conversation.state.close()

    def health(self) -> dict[str, Any]:
        vocoder = self._vocoder.health()
        ready = self._scheduler is not None and self._scheduler.alive
        status = "ok" if ready and vocoder.get("alive") else "degraded"
        if self._scheduler is not None and not self._scheduler.alive:
            status = "dead"  # the model thread is gone: /health answers 503
        return {"status": status,
                "engine": self.name,
                "models": {"s2s": str(self._model_path), "tts": vocoder.get("model")},
                "devices": {"s2s": self._device, "tts": vocoder.get("device")},
                "batch": {"active": self._scheduler.num_active if ready else 0,
                          "max": self._max_batch},
                "workers": {self._vocoder.name: vocoder}}
