"""OpenAI's Realtime API: /v1/realtime conversations on the S2S server, transcription on the ASR server.

The wire format, pure (no I/O, no session state), in both the GA and beta dialects:
- `messages`: client events as typed frozen dataclasses, the session settings;
- `protocol`: client JSON -> those events (every refusal a RealtimeProtocolError);
- `events`: server events as JSON-ready dicts, named in the client's dialect;
- `audio_formats`: PCM16 and G.711 u-law/A-law <-> float32.
Serving it:
- `appended_audio`: a connection's appended audio -> float32 24 kHz;
- `response`: one response's output items and their events;
- `wire`: RealtimeWire, the S2S server's wire over the shared ChatSession (session.py);
- `transcription`: RealtimeTranscription, the ASR server's transcription sessions.
"""
