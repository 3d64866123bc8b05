"""CosyVoice3, our implementation.

- token -> waveform (flow-matching DiT + causal HiFT): `Token2Wav.from_model_dir(dir,
  device=..., dtype=...)`, then `new_stream(mode)` per reply; see streaming.py. Exported here.
- text -> speech tokens -> waveform: `synthesizer.CosyVoice3Tts.from_model_dir(dir)` (text
  front end, prompt features, the LLM and its sampler, speakers); not imported here, so the
  vocoder alone does not pay for transformers and the front end.
"""

from __future__ import annotations

from .loading import StateDictMismatch
from .streaming import StreamMode, Token2Wav, Token2WavStream

__all__ = ["StateDictMismatch", "StreamMode", "Token2Wav", "Token2WavStream"]
