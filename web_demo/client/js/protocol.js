// The /api/chat wire format, mirroring web_demo/server/protocol.py: every WebSocket frame is
// one type byte followed by its payload. Pure functions, no I/O.

export const MsgType = Object.freeze({
  HANDSHAKE: 0x00,
  AUDIO: 0x01, // whole Ogg/Opus pages, 24 kHz mono, one continuous stream per direction
  TEXT: 0x02, // UTF-8, server -> client
  CONTROL: 0x03, // one byte, see Control
  METADATA: 0x04, // UTF-8 JSON object
  ERROR: 0x05, // UTF-8 message, server -> client
  PING: 0x06, // empty
});

export const Control = Object.freeze({ START: 0x00, END_TURN: 0x01, PAUSE: 0x02, RESTART: 0x03 });

export const PROTOCOL_VERSION = 0;
export const MAX_SYSTEM_PROMPT_CHARS = 16000;
// The server's status frame at the start of every reply (session.py PROCESSING_TEXT) and the
// prefix of the frame that carries the whole reply text at its end.
export const PROCESSING_TEXT = "[Processing...]";
export const FINAL_PREFIX = "\n[Final:";

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8");

function frame(type, payload = new Uint8Array(0)) {
  const out = new Uint8Array(1 + payload.length);
  out[0] = type;
  out.set(payload, 1);
  return out;
}

export const encodeAudio = (ogg) => frame(MsgType.AUDIO, ogg);
export const encodeControl = (action) => frame(MsgType.CONTROL, Uint8Array.of(action));
export const encodeMetadata = (data) => frame(MsgType.METADATA, utf8.encode(JSON.stringify(data)));
export const encodePing = () => frame(MsgType.PING);

// ArrayBuffer -> {type, payload (Uint8Array)} plus, where the type has one, a decoded value:
// `text` (TEXT, ERROR), `data` (METADATA; null when the JSON is unreadable), `version`
// (HANDSHAKE). Unknown types are returned as they are: the caller decides to ignore them.
export function decodeFrame(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length === 0) return { type: -1, payload: bytes };
  const type = bytes[0];
  const payload = bytes.subarray(1);
  if (type === MsgType.TEXT || type === MsgType.ERROR) {
    return { type, payload, text: utf8Decoder.decode(payload) };
  }
  if (type === MsgType.METADATA) return { type, payload, data: parseJsonObject(payload) };
  if (type === MsgType.HANDSHAKE) return { type, payload, version: payload[0] ?? null };
  return { type, payload };
}

function parseJsonObject(payload) {
  try {
    const value = JSON.parse(utf8Decoder.decode(payload));
    return value && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

// "\n[Final: whole text]" -> "whole text" (as chat_client.py's Reply.final_text reads it).
export function parseFinal(text) {
  if (!text.startsWith(FINAL_PREFIX)) return null;
  let body = text.slice(FINAL_PREFIX.length);
  if (body.startsWith(" ")) body = body.slice(1);
  return body.endsWith("]") ? body.slice(0, -1) : body;
}

// The /api/chat URL of the page's own server. Browsers cannot set headers on a WebSocket,
// so the key travels as ?api_key= (middleware.py accepts it on upgrades only).
export function chatUrl(location, { apiKey = "", vad = false } = {}) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URL(`${scheme}//${location.host}/api/chat`);
  url.searchParams.set("extras", "1");
  if (vad) url.searchParams.set("vad", "1");
  if (apiKey) url.searchParams.set("api_key", apiKey);
  return url.toString();
}
