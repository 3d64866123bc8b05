"""The Fun-Audio-Chat model: audio encoders, Qwen3 text backbone and CRQ speech head.

Module names match upstream checkpoint keys. The model holds weights only; caches and
generation state live in ``ConversationState`` and the decoding code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .audio_encoder import ContinuousAudioEncoder
from .config import FunAudioChatConfig
from .crq_head import SpeechHead
from .discrete_encoder import DiscreteAudioEncoder, placeholder_count
from .kv_cache import PrefixKVCache
from .qwen3 import TextBackbone


class FunAudioChatModel(nn.Module):
    """Weights and stateless building steps of the speech-to-speech model."""

    def __init__(self, cfg: FunAudioChatConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.continuous_audio_tower = ContinuousAudioEncoder(cfg.audio)
        self.audio_tower = DiscreteAudioEncoder(cfg.audio)
        self.audio_invert_tower = SpeechHead(cfg.audio, cfg.crq)
        self.language_model = TextBackbone(cfg.text)
        self.tie_weights()

    def tie_weights(self) -> None:
        """The CRQ output matrix is the speech codebook (one tensor, two names)."""
        self.audio_invert_tower.lm_head.weight = self.audio_tower.embed_tokens.weight

    @property
    def group(self) -> int:
        return self.cfg.audio.group_size

    def new_lm_cache(self) -> PrefixKVCache:
        return PrefixKVCache(self.cfg.text.num_hidden_layers)

    def new_crq_cache(self) -> PrefixKVCache:
        return PrefixKVCache(self.cfg.crq.num_hidden_layers)

    def padded_speech_len(self, frames: list[int]) -> int:
        """S: the longest audio's 25 Hz frame count rounded up to a multiple of G."""
        return placeholder_count(max(frames), self.group) * self.group

    def encode_audio(self, features: Tensor, mel_lens: list[int], frames: list[int]) -> list[Tensor]:
        """LM rows for each audio: features [A, mels, 3000] -> A tensors [ceil(frames_a / G), D].

        All speech ids are the pad id (the real S2S path has no transcripts), so with
        ``replace`` mode the rows come from the continuous encoder alone.
        """
        a = features.shape[0]
        assert len(mel_lens) == a and len(frames) == a, (a, mel_lens, frames)
        s = self.padded_speech_len(frames)
        cont, _ = self.continuous_audio_tower(features, mel_lens, s)  # [A, S, D]
        speech_ids = torch.full((a, s), self.cfg.audio.pad_token_id, dtype=torch.long, device=features.device)
        exists = torch.tensor([n > 0 for n in mel_lens], device=features.device)
        rows = self.audio_tower(speech_ids, cont, exists)  # [A, S/G, D]
        return [rows[i, : placeholder_count(f, self.group)] for i, f in enumerate(frames)]

    def embed_prompt(self, ids: Tensor, audio_rows: Tensor) -> Tensor:
        """ids: [1, n]; audio_rows: [N, D], one per ``<|AUDIO|>`` in ids, in order -> [1, n, D]."""
        assert ids.dim() == 2 and ids.shape[0] == 1, ids.shape
        embeds = self.language_model.embed(ids)  # [1, n, D]
        slots = ids[0] == self.cfg.audio_token_index
        n_slots = int(slots.sum())
        if n_slots != audio_rows.shape[0]:
            raise ValueError(f"prompt has {n_slots} audio tokens but {audio_rows.shape[0]} audio rows")
        if n_slots:
            embeds = embeds.clone()
            embeds[0, slots] = audio_rows.to(embeds.dtype)
        return embeds

    def speech_group_rows(self, groups: Tensor) -> Tensor:
        """Speech groups [B, G] -> LM-width rows [B, D] (discrete encoder, no features)."""
        return self.audio_tower.embed_groups(groups)[:, 0]
