"""CosyVoice3 token->waveform half (flow-matching DiT + causal HiFT), our implementation.

Entry points: `Token2Wav.from_model_dir(dir, device=..., dtype=...)`, then
`new_stream(mode)` per reply; see streaming.py.
"""

from __future__ import annotations

from .loading import StateDictMismatch
from .streaming import StreamMode, Token2Wav, Token2WavStream

__all__ = ["StateDictMismatch", "StreamMode", "Token2Wav", "Token2WavStream"]
