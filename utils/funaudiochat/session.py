"""Per-session conversation state and the prefill that starts a turn.

``ConversationState`` owns a session's history and its KV caches (LM and CRQ) between turns. A
new turn renders the whole conversation, keeps the cached prefix when the new prompt extends the
previous one, and prefills only the new tokens. Dropping old turns (the history cap) changes the
prefix, so the prompt is then recomputed from scratch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .decoding import StepResult, TurnRow, choose_text, speech_chooser
from .discrete_encoder import placeholder_count
from .frontend import frames_25hz
from .kv_cache import PrefixKVCache
from .loading import FunAudioChatRuntime
from .prompt import (
    AUDIO_TEMPLATE,
    S2T_SYSTEM_PROMPT,
    SPOKEN_S2M_SYSTEM_PROMPT,
    clean_assistant_text,
    expand_audio,
    render_chat,
)
from .sampling import SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserTurn:
    """A user message: 16 kHz float32 mono audio [T] in memory, and/or text.

    ``frames_25hz`` overrides the speech frame count (upstream's server uses ceil of the
    duration of its 24 kHz recording; in-memory waveforms use floor).
    """

    audio: np.ndarray | None = None
    text: str | None = None
    frames_25hz: int | None = None

    def __post_init__(self) -> None:
        if self.audio is None and not self.text:
            raise ValueError("a user turn needs audio or text")


@dataclass
class _Message:
    role: str
    content: str
    audio_rows: Tensor | None = None  # [n_placeholders, D], encoded once when the turn arrives


@dataclass
class _Caches:
    lm: PrefixKVCache
    crq: PrefixKVCache | None
    ids: list[int]  # prompt ids the LM cache covers
    crq_last_x: Tensor | None = None  # [1, 1, D] CRQ input of the last cached LM position


@dataclass
class PreparedTurn:
    """A prefilled turn: its row, the result of step 0 and the caches a decode batch copies."""

    row: TurnRow
    first: StepResult
    lm_cache: PrefixKVCache
    crq_cache: PrefixKVCache | None


@dataclass
class ConversationState:
    """History and caches of one conversation; owned by one session, used by one turn at a time.

    ``max_user_turns`` caps the user messages in a prompt (upstream's server keeps 8), dropping
    the oldest user/assistant pairs first.
    """

    system_prompt: str | None = None
    max_user_turns: int = 8
    messages: list[_Message] = field(default_factory=list)
    busy: bool = False
    _caches: _Caches | None = None
    last_generated_ids: list[int] = field(default_factory=list)  # previous turn, as recorded
    _row: TurnRow | None = None

    @property
    def history(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.messages]

    def cached_tokens(self) -> int:
        return len(self._caches.ids) if self._caches else 0

    def close(self) -> None:
        """Free the caches and the history."""
        self._caches, self._row = None, None
        self.messages.clear()
        self.busy = False

    def add_user_message(self, runtime: FunAudioChatRuntime, turn: UserTurn, *, speech: bool = True) -> None:
        """Append a user message without generating (history building); the first message
        brings the default system prompt of the mode unless ``system_prompt`` is set."""
        if self.busy:
            raise RuntimeError("this conversation has a turn in progress")
        if not self.messages:
            system = self.system_prompt or (SPOKEN_S2M_SYSTEM_PROMPT if speech else S2T_SYSTEM_PROMPT)
            self.messages.append(_Message("system", system))
        rows = None
        content = turn.text or ""
        if turn.audio is not None:
            rows = encode_user_audio(runtime, turn)
            content += AUDIO_TEMPLATE
        self.messages.append(_Message("user", content, rows))
        self._trim()

    def _trim(self) -> None:
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        while len(users) > self.max_user_turns:
            # drop the oldest user message and everything up to the next user message
            del self.messages[users[0] : users[1]]
            users = [i for i, m in enumerate(self.messages) if m.role == "user"]

    def add_assistant_message(self, text: str) -> None:
        """Append an assistant reply given as text (history building)."""
        if self.busy or not self.messages or self.messages[-1].role != "user":
            raise RuntimeError("an assistant message must follow a user message of a finished turn")
        self.messages.append(_Message("assistant", text))

    def fork(self, system_prompt: str) -> ConversationState:
        """A copy of this history under another system prompt, without caches: a side pass
        (e.g. deciding on a tool call in S2T mode) that leaves this conversation untouched."""
        if self.busy:
            raise RuntimeError("this conversation has a turn in progress")
        messages = [_Message(m.role, m.content, m.audio_rows) for m in self.messages if m.role != "system"]
        return ConversationState(system_prompt=system_prompt, max_user_turns=self.max_user_turns,
                                 messages=[_Message("system", system_prompt), *messages])

    def adopt_last_exchange(self, fork: ConversationState) -> None:
        """Appends the fork's last user message and its reply (audio already encoded) to this
        history, as if this conversation had answered that turn."""
        if self.busy or fork.busy or len(fork.messages) < 2 or fork.messages[-2].role != "user":
            raise RuntimeError("the fork has no finished exchange to adopt")
        if not self.messages:
            self.messages.append(_Message("system", self.system_prompt or SPOKEN_S2M_SYSTEM_PROMPT))
        user, reply = fork.messages[-2:]
        self.messages += [_Message(user.role, user.content, user.audio_rows),
                          _Message(reply.role, reply.content)]
        self._trim()

    def set_system_prompt(self, prompt: str | None) -> None:
        """Takes effect from the next turn (the cached prefix is recomputed)."""
        if self.busy:
            raise RuntimeError("this conversation has a turn in progress")
        self.system_prompt = prompt
        if prompt and self.messages and self.messages[0].role == "system":
            self.messages[0].content = prompt

    def set_last_reply(self, text: str) -> None:
        """Replaces the last assistant message (e.g. with only what reached the listener
        before a barge-in), or adds it when the turn ended before any step."""
        if self.busy or not self.messages:
            raise RuntimeError("no finished turn to set the reply of")
        if self.messages[-1].role == "assistant":
            self.messages[-1].content = text
        else:
            self.messages.append(_Message("assistant", text))

    def _prompt(self, runtime: FunAudioChatRuntime) -> tuple[list[int], list[Tensor]]:
        if runtime.tokenizer is None:
            raise RuntimeError("a text tokenizer is needed to build prompts (pass tokenizer_path)")
        audio = [m.audio_rows for m in self.messages if m.audio_rows is not None]
        text = expand_audio(render_chat(self.history), [a.shape[0] for a in audio])
        return runtime.tokenizer.encode(text, add_special_tokens=False), audio

    def finish_turn(self) -> None:
        """Record the assistant reply (complete or cut short) and release the turn."""
        row, self._row = self._row, None
        self.busy = False
        if row is None:
            return
        self.last_generated_ids = row.generated_ids
        if row.runtime.tokenizer is None:
            return
        decoded = row.runtime.tokenizer.decode(row.generated_ids, skip_special_tokens=False)
        self.messages.append(_Message("assistant", clean_assistant_text(decoded)))


def encode_user_audio(runtime: FunAudioChatRuntime, turn: UserTurn) -> Tensor:
    """One audio -> its LM rows [ceil(frames / G), D]."""
    assert turn.audio is not None
    frames = turn.frames_25hz if turn.frames_25hz is not None else frames_25hz(len(turn.audio))
    features, mel_lens = runtime.frontend([turn.audio])
    with torch.inference_mode():
        rows = runtime.model.encode_audio(features.to(runtime.device, runtime.dtype), mel_lens, [frames])
    assert rows[0].shape[0] == placeholder_count(frames, runtime.config.audio.group_size)
    return rows[0]


@torch.inference_mode()
def start_turn(
    runtime: FunAudioChatRuntime, state: ConversationState, turn: UserTurn, params: SamplingParams, *,
    speech: bool,
) -> PreparedTurn:
    """Add the user turn, prefill what the caches lack and run decode step 0."""
    if state.busy:
        raise RuntimeError("this conversation already has a turn in progress")
    state.add_user_message(runtime, turn, speech=speech)
    ids, audio = state._prompt(runtime)
    caches = _reusable(state._caches, ids, speech) or _fresh(runtime, speech)
    prepared = _prefill(runtime, caches, ids, audio, params, speech)
    state._caches, state._row, state.busy = caches, prepared.row, True
    return prepared


@torch.inference_mode()
def prefill_prompt(
    runtime: FunAudioChatRuntime, ids: list[int], audio_rows: list[Tensor], params: SamplingParams, *,
    speech: bool,
) -> PreparedTurn:
    """Prefill prompt ids (already expanded) into fresh caches, without a conversation."""
    return _prefill(runtime, _fresh(runtime, speech), ids, audio_rows, params, speech)


def _prefill(
    runtime: FunAudioChatRuntime, caches: _Caches, ids: list[int], audio: list[Tensor],
    params: SamplingParams, speech: bool,
) -> PreparedTurn:
    """Run the LM (and CRQ) over ``ids`` past the cached prefix, then choose step 0."""
    start = len(caches.ids)
    logger.debug("prefill %d new tokens (reusing %d)", len(ids) - start, start)
    model = runtime.model
    new_ids = torch.tensor([ids[start:]], device=runtime.device)  # [1, n]
    skip = sum(1 for t in caches.ids if t == runtime.config.audio_token_index)
    if audio:
        rows = torch.cat(audio)[skip:]  # [N, D]: the audio placeholders not in the cache yet
    else:
        rows = torch.zeros(0, runtime.config.hidden_size, device=runtime.device)
    embeds = model.embed_prompt(new_ids, rows.to(runtime.dtype))  # [1, n, D]
    logits, hidden = model.language_model(embeds, caches.lm)
    row = TurnRow(runtime, ids, params, speech=speech)
    row.begin_step()
    crq_tokens = None
    if speech:
        assert caches.crq is not None
        x = hidden + model.language_model.embed(new_ids)  # [1, n, D]
        if caches.crq_last_x is not None:
            # the last cached position fed sampled tokens back; with more prompt after it, it
            # must see BOS like every prompt position but the last G-1 sub-positions
            caches.crq.crop(caches.crq.length - model.group)
            x = torch.cat([caches.crq_last_x, x], dim=1)
        prev = torch.tensor([runtime.config.audio.bos_token_id], device=runtime.device)
        toks, _ = model.audio_invert_tower.generate_group(x, caches.crq, prev, speech_chooser([row]))
        crq_tokens = toks[0].tolist()
        row.crq_prev = crq_tokens[-1]
        caches.crq_last_x = x[:, -1:]
    caches.ids = ids
    first = row.apply(choose_text([row], logits)[0], crq_tokens)
    return PreparedTurn(row, first, caches.lm, caches.crq)


def _fresh(runtime: FunAudioChatRuntime, speech: bool) -> _Caches:
    model = runtime.model
    return _Caches(model.new_lm_cache(), model.new_crq_cache() if speech else None, [])


def _reusable(caches: _Caches | None, ids: list[int], speech: bool) -> _Caches | None:
    """The cached prefix, if the new prompt extends it (and the CRQ cache is there if needed)."""
    if caches is None or len(caches.ids) >= len(ids) or ids[: len(caches.ids)] != caches.ids:
        return None
    if speech and caches.crq_last_x is None:
        return None
    if not speech:
        caches.crq, caches.crq_last_x = None, None  # a text-only turn would leave it stale
    return caches
