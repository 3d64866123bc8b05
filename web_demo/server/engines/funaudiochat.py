"""Fun-Audio-Chat engine: the native runtime with batched decoding, plus the vocoder worker.

Data path of one reply: user PCM 16 kHz -> Scheduler (all sessions decode together in its
thread, the only thread that runs the model) -> per LLM step: a text piece and 5 speech
tokens -> this reply's CosyVoice3 vocoder stream -> PCM 24 kHz. Beside it, the same user PCM
goes to the ASR layer (a worker or a remote ASR) for the user transcript. Each session's
conversation holds a ConversationState (history + KV caches), the only copy of its history,
so a new turn only prefills its new tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from web_demo.server.engines.base import (
    AsrEngine,
    AudioDelta,
    QueuePosition,
    ReplyEvent,
    ReplyRequest,
    SamplingOptions,
    TextDelta,
    ToolCall,
    TranscriptionRequest,
    UserTranscript,
    Vocoder,
    VocoderStream,
)
from web_demo.server.errors import EngineDead, EngineError, ServingError

logger = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0  # a cancelled turn leaves the batch at the scheduler's next step
TRANSCRIPT_WAIT_S = 2.0  # after the reply's end; a transcript later than that is dropped


class FunAudioChatEngine:
    name = "funaudiochat"

    def __init__(self, *, model_path: Path, tokenizer_path: Path | None, device: str,
                 vocoder: Vocoder, max_batch: int = 32, cuda_graphs: bool = False, sampling: Any = None,
                 transcriber: AsrEngine | None = None, transcript_language: str | None = None) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._device = device
        self.vocoder = vocoder
        self.transcriber = transcriber  # the user transcripts; None: none are sent
        self.transcript_language = transcript_language
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs  # static-shape decode steps, replayed as CUDA graphs
        self.sampling = sampling
        self._runtime: Any = None
        self.scheduler: Any = None  # utils.funaudiochat.Scheduler once started
        self.conversations: dict[str, FunAudioChatConversation] = {}  # open ones, by session

    async def start(self) -> None:
        from utils.funaudiochat import SamplingParams, Scheduler, load_model
        from utils.funaudiochat.static_decode import StaticDecodeConfig, buckets_up_to

        self._runtime = await asyncio.to_thread(
            load_model, self._model_path, tokenizer_path=self._tokenizer_path, device=self._device)
        self.sampling = self.sampling or SamplingParams()
        static = (StaticDecodeConfig(batch_buckets=buckets_up_to(self.max_batch), cuda_graphs=True)
                  if self.cuda_graphs else None)  # off CUDA the static steps run eagerly
        self.scheduler = Scheduler(self._runtime, max_batch=self.max_batch, static=static)
        self.scheduler.start()
        await self.vocoder.start()
        if self.transcriber is not None:
            await self.transcriber.start()

    async def aclose(self) -> None:
        if self.transcriber is not None:
            await self.transcriber.aclose()
        await self.vocoder.aclose()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)

    def open_session(self, session_id: str, *, history_turns: int) -> FunAudioChatConversation:
        conversation = FunAudioChatConversation(self, session_id=session_id, history_turns=history_turns)
        self.conversations[session_id] = conversation
        return conversation

    def check_alive(self, exc: BaseException | None = None) -> None:
        """Raises EngineDead when the scheduler thread is gone (it failed every turn)."""
        if self.scheduler is None or not self.scheduler.alive:
            raise EngineDead("the Fun-Audio-Chat model thread is not running") from exc

    def health(self) -> dict[str, Any]:
        vocoder = self.vocoder.health()
        workers = {self.vocoder.name: vocoder}
        if self.transcriber is not None:
            workers[self.transcriber.name] = self.transcriber.health()
        ready = self.scheduler is not None and self.scheduler.alive
        status = "healthy" if ready and vocoder.get("alive") else "degraded"
        if self.scheduler is not None and not self.scheduler.alive:
            status = "dead"  # the model thread is gone: /health answers 503
        return {"status": status,
                "engine": self.name,
                "models": {"s2s": str(self._model_path), "vocoder": vocoder.get("model")},
                "devices": {"s2s": self._device, "vocoder": vocoder.get("device")},
                "batch": {"active": self.scheduler.num_active if ready else 0,
                          "max": self.max_batch},
                "conversations": len(self.conversations),
                "workers": workers}


def _user_turn(request: ReplyRequest) -> Any:
    """The runtime's UserTurn: the speech, or the typed text of a Realtime API client."""
    from utils.funaudiochat import UserTurn

    if request.tool_results:
        from utils.funaudiochat.tools import tool_response_text

        return UserTurn(text=tool_response_text([r.output for r in request.tool_results]))
    if request.user_text is not None:
        return UserTurn(text=request.user_text)
    return UserTurn(audio=request.user_audio_16k)


def turn_sampling(base: Any, options: SamplingOptions | None) -> Any:
    """The runtime's SamplingParams of one turn: the engine's `base` with what the session
    asked for; text and speech get their own settings (and RNG) once the session sets any."""
    if options is None:
        return base

    def kind(params: Any, temperature: float | None, top_k: int | None, seed: int | None) -> Any:
        changes: dict[str, Any] = {"seed": params.seed if seed is None else seed}
        if temperature is not None:  # 0: greedy, which the runtime spells do_sample=False
            changes.update(do_sample=temperature > 0,
                           temperature=temperature if temperature > 0 else params.temperature)
        if top_k is not None:
            changes["top_k"] = top_k
        return dataclasses.replace(params, **changes)

    shared: dict[str, Any] = {"speech": None}
    if options.repetition_penalty is not None:
        shared["repetition_penalty"] = options.repetition_penalty
    if options.repetition_window is not None:
        shared["penalty_window"] = options.repetition_window
    if options.max_text_tokens is not None:  # a decode step makes one text token
        shared["max_steps"] = min(options.max_text_tokens, base.max_steps)
    common = dataclasses.replace(base, **shared)
    speech = kind(common, options.speech_temperature, options.speech_top_k, options.speech_seed)
    text = kind(common, options.text_temperature, options.text_top_k, options.text_seed)
    return dataclasses.replace(text, speech=speech)


class FunAudioChatConversation:
    """One session's ConversationState and its latest turn; used by one reply at a time."""

    def __init__(self, engine: FunAudioChatEngine, *, session_id: str, history_turns: int) -> None:
        from utils.funaudiochat import ConversationState

        self._engine = engine
        self._session_id = session_id
        self._max_user_turns = history_turns + 1  # the history plus the turn being answered
        self._state = ConversationState(max_user_turns=self._max_user_turns)
        self._handle: Any = None  # TurnHandle of the latest turn
        self._completed = True  # whether the latest reply ran to its end
        self._heard: str | None = None  # what reached the listener of a reply cut short
        self._reset = False

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[ReplyEvent, None]:
        engine = self._engine
        engine.check_alive()
        await self._settle(request.system_prompt)
        if request.tools and not request.tool_results:
            calls = await self._tool_pass(request)
            if calls:  # the reply is the calls; the client answers them in the next turn
                for call in calls:
                    yield call
                return
        try:
            handle = engine.scheduler.submit(self._state, _user_turn(request),
                                             turn_sampling(engine.sampling, request.sampling),
                                             mode="s2s")
        except RuntimeError as exc:
            engine.check_alive(exc)
            raise EngineError(f"cannot start the turn: {exc}", retryable=True) from exc
        self._handle, self._completed = handle, False
        stream: VocoderStream | None = None
        transcript = _UserTranscriber(engine, request)
        try:
            stream = engine.vocoder.open_stream()
            position = engine.scheduler.queue_position(handle)
            if position is not None and engine.scheduler.num_active >= engine.max_batch:
                yield QueuePosition(position)  # every batch slot is taken: say how long the line is
            async for event in self._steps(handle, stream):
                yield event
                if (heard := transcript.ready()) is not None:
                    yield heard
            for pcm_24k in await stream.finish():
                yield AudioDelta(pcm_24k)
            if (heard := await transcript.wait()) is not None:
                yield heard
            self._completed = True
        finally:
            transcript.cancel()
            if not self._completed:  # barge-in, client gone or a failure: stop both halves
                handle.cancel()
                if stream is not None:
                    with contextlib.suppress(ServingError):
                        await stream.aclose()

    async def _tool_pass(self, request: ReplyRequest) -> list[ToolCall]:
        """Whether the model calls a tool: an S2T pass under the function-calling prompt, as
        upstream runs it (greedy text), on a fork of the history. With calls, that exchange
        joins the history; without, the fork is dropped and the turn is answered in speech by
        the usual S2S pass (the S2T answer is not spoken: the model speaks only in S2S mode)."""
        from utils.funaudiochat.tools import function_calling_prompt, parse_tool_calls

        engine = self._engine
        fork = self._state.fork(function_calling_prompt(
            [{"name": t.name, "description": t.description, "parameters": t.parameters}
             for t in request.tools]))
        params = dataclasses.replace(turn_sampling(engine.sampling, request.sampling), text_greedy=True)
        try:
            handle = engine.scheduler.submit(fork, _user_turn(request), params, mode="s2t")
        except RuntimeError as exc:
            engine.check_alive(exc)
            raise EngineError(f"cannot start the turn: {exc}", retryable=True) from exc
        self._handle = handle
        try:
            async for _step in handle:
                pass
        except Exception as exc:  # raised by the scheduler thread for this turn
            engine.check_alive(exc)
            raise EngineError(f"generation failed: {exc}") from exc
        finally:
            if not handle.done.is_set():  # cut short (barge-in, client gone)
                handle.cancel()
        reply = fork.messages[-1].content if fork.messages[-1].role == "assistant" else ""
        calls, _ = parse_tool_calls(reply)
        if calls:
            self._state.adopt_last_exchange(fork)
        fork.close()
        return [ToolCall(f"call_{secrets.token_hex(8)}", c.name, c.arguments) for c in calls]

    async def _steps(self, handle: Any, stream: VocoderStream) -> AsyncGenerator[ReplyEvent, None]:
        try:
            async for step in handle:
                if step.text_piece:
                    yield TextDelta(step.text_piece)
                if step.speech_tokens:
                    for pcm_24k in await stream.push(step.speech_tokens):
                        yield AudioDelta(pcm_24k)
        except ServingError:
            raise
        except Exception as exc:  # raised by the scheduler thread for this turn
            self._engine.check_alive(exc)
            raise EngineError(f"generation failed: {exc}") from exc

    async def _settle(self, system_prompt: str | None) -> None:
        """Waits for the previous turn to leave the batch, then applies what the session
        reported since (restart, the heard part of a cut reply, a new system prompt)."""
        from utils.funaudiochat import ConversationState

        if (self._handle is not None and not self._handle.done.is_set()
                and not await asyncio.to_thread(self._handle.done.wait, CANCEL_WAIT_S)):
            raise EngineError("the previous turn did not stop in time", retryable=True)
        if self._reset:
            self._state.close()
            self._state = ConversationState(max_user_turns=self._max_user_turns)
        elif self._heard is not None and self._state.messages:
            self._state.set_last_reply(self._heard)
        self._reset, self._heard = False, None
        prompt = speech_system_prompt(system_prompt)
        if prompt != self._state.system_prompt:
            self._state.set_system_prompt(prompt)

    def commit_reply(self, heard_text: str) -> None:
        if not self._completed:  # keep only what the listener heard of the last reply
            self._heard = heard_text

    def reset(self) -> None:
        self._reset = True

    async def aclose(self) -> None:
        self._engine.conversations.pop(self._session_id, None)
        if self._handle is not None and not self._handle.done.is_set():
            self._handle.cancel()  # the scheduler frees the caches when it drops the row
        else:
            self._state.close()


class _UserTranscriber:
    """One turn's user transcript, transcribed beside the reply; sent once, when it is ready.
    A failed or late transcription costs the transcript only, never the reply."""

    def __init__(self, engine: FunAudioChatEngine, request: ReplyRequest) -> None:
        self._task: asyncio.Task[str] | None = None
        self._sent = False
        if engine.transcriber is not None and request.user_text is None:  # typed: nothing to hear
            self._task = asyncio.create_task(self._transcribe(engine.transcriber, TranscriptionRequest(
                pcm_16k=request.user_audio_16k, language=engine.transcript_language)))

    @staticmethod
    async def _transcribe(asr: AsrEngine, request: TranscriptionRequest) -> str:
        return (await asr.transcribe(request)).text

    def ready(self) -> UserTranscript | None:
        if self._sent or self._task is None or not self._task.done():
            return None
        self._sent = True
        if self._task.cancelled() or self._task.exception() is not None:
            logger.warning("user transcript failed: %s",
                           "cancelled" if self._task.cancelled() else self._task.exception())
            return None
        return UserTranscript(self._task.result())

    async def wait(self) -> UserTranscript | None:
        if self._task is not None and not self._sent:
            await asyncio.wait([self._task], timeout=TRANSCRIPT_WAIT_S)
        return self.ready()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def speech_system_prompt(prompt: str | None) -> str | None:
    """A client's prompt keeps the S2M instruction the model was trained to answer in speech
    with; None keeps the runtime's default spoken prompt."""
    from utils.funaudiochat.prompt import S2M_SYSTEM_PROMPT

    if prompt is None or prompt.startswith(S2M_SYSTEM_PROMPT):
        return prompt
    return f"{S2M_SYSTEM_PROMPT} {prompt}"
