"""Native runtime for Fun-Audio-Chat-8B (speech in; text + speech tokens out).

Public API::

    runtime = load_model(model_dir, tokenizer_path=None, device=None, dtype=None)
    state = ConversationState(system_prompt=None, max_user_turns=8)   # one per session

    # one session, no scheduler
    for step in stream_turn(runtime, state, UserTurn(audio=pcm_16k), SamplingParams(), mode="s2s"):
        step.text_token, step.text_piece, step.speech_tokens, step.finished

    # many sessions, batched decoding in a background thread
    scheduler = Scheduler(runtime); scheduler.start()
    handle = scheduler.submit(state, UserTurn(audio=pcm_16k), SamplingParams(), mode="s2s")
    for step in handle: ...            # or: async for step in handle (when submitted in a loop)
    handle.cancel(); scheduler.stop()

``StepResult.speech_tokens`` holds 5 speech ids per step; codes < 6561 go to the vocoder.
"""

from __future__ import annotations

from .config import FunAudioChatConfig
from .decoding import StepResult
from .generation import stream_turn
from .loading import CheckpointError, FunAudioChatRuntime, load_model
from .sampling import ExtraLogitsProcessor, SamplingParams
from .scheduler import Scheduler, TurnHandle
from .session import ConversationState, UserTurn

__all__ = [
    "CheckpointError",
    "ConversationState",
    "ExtraLogitsProcessor",
    "FunAudioChatConfig",
    "FunAudioChatRuntime",
    "SamplingParams",
    "Scheduler",
    "StepResult",
    "TurnHandle",
    "UserTurn",
    "load_model",
    "stream_turn",
]
