"""The OpenAI Realtime API on /v1/realtime: its wire format, in both the GA and beta dialects.

- `protocol`: client events (JSON text frames) -> typed frozen dataclasses; `SessionConfig`.
- `events`: server events as JSON-ready dicts, named in the client's dialect.
- `audio_formats`: PCM16 and G.711 u-law/A-law <-> float32.

All three are pure: no I/O, no session state. The session that serves them owns both.
"""
