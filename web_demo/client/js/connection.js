// The /api/chat WebSocket: handshake, frames in and out, and reconnecting with backoff when
// the socket drops (a server restart, a network change). The server pings every 10 s
// (--ping-interval) in silence, so 30 s without a frame means the socket is dead.

import { MsgType, decodeFrame, PROTOCOL_VERSION } from "./protocol.js";

const BACKOFF_MS = [500, 1000, 2000, 4000];
const MAX_BACKOFF_MS = 5000;
const SILENCE_LIMIT_MS = 30000;

export const State = Object.freeze({
  IDLE: "idle", // not connected and not trying
  CONNECTING: "connecting", // socket opening, waiting for the handshake
  CONNECTED: "connected",
  WAITING: "waiting", // dropped; the next attempt is scheduled
});

export class Connection {
  // `url()`: the URL to open (read at every attempt, so settings apply on reconnect).
  // `diagnose()`: after a socket failed before its handshake, resolves to a message when
  // retrying cannot help (e.g. a wrong API key), else to null.
  constructor({ url, onConnected, onFrame, onStatus, diagnose }) {
    Object.assign(this, { url, onConnected, onFrame, onStatus, diagnose });
    this.state = State.IDLE;
    this.ws = null;
    this.attempt = 0; // failed attempts since the last handshake
    this.retryTimer = null;
    this.watchdog = null;
    this.everConnected = false;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.closeSocket();
    const ws = new WebSocket(this.url());
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this.receive(ws, event.data);
    ws.onclose = (event) => this.dropped(ws, event.code, event.reason);
    this.ws = ws;
    this.handshaken = false;
    this.refusal = null;
    this.setState(State.CONNECTING);
  }

  disconnect() {
    clearTimeout(this.retryTimer);
    this.closeSocket(1000, "bye");
    this.attempt = 0;
    this.setState(State.IDLE);
  }

  // True when the frame was handed to the socket.
  send(bytes) {
    if (this.state !== State.CONNECTED || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(bytes);
    return true;
  }

  receive(ws, data) {
    if (ws !== this.ws || typeof data === "string") return; // the protocol is binary only
    this.armWatchdog(ws);
    const frame = decodeFrame(data);
    if (!this.handshaken) {
      if (frame.type === MsgType.HANDSHAKE) return this.handshake(frame);
      // A refusal (loading, draining, full) is a 0x05 frame and a close instead of the
      // handshake: it becomes the close reason, as retrying is the answer to it.
      if (frame.type === MsgType.ERROR) return void (this.refusal = frame.text);
    }
    this.onFrame(frame);
  }

  handshake(frame) {
    if (frame.version !== PROTOCOL_VERSION) {
      this.onStatus({ state: this.state, error: `server speaks protocol version ${frame.version}` });
    }
    this.handshaken = true;
    this.everConnected = true;
    this.attempt = 0;
    this.setState(State.CONNECTED);
    this.onConnected();
  }

  async dropped(ws, code, reason) {
    if (ws !== this.ws) return;
    const wasConnected = this.handshaken;
    this.closeSocket();
    const close = { code, reason: this.refusal || reason || describeClose(code) };
    if (!wasConnected && this.diagnose) {
      const fatal = await this.diagnose();
      if (fatal) {
        this.setState(State.IDLE, { close, error: fatal });
        return;
      }
    }
    if (this.state === State.IDLE) return; // disconnected while diagnosing
    const delay = BACKOFF_MS[this.attempt] ?? MAX_BACKOFF_MS;
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.setState(State.WAITING, { close, retryInMs: delay, attempt: this.attempt, wasConnected });
  }

  armWatchdog(ws) {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.dropped(ws, 4000, "no frame from the server for 30 s"),
      SILENCE_LIMIT_MS);
  }

  closeSocket(code, reason) {
    clearTimeout(this.watchdog);
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
      ws.close(code, reason);
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    this.onStatus({ state, ...detail });
  }
}

function describeClose(code) {
  return {
    1000: "closed normally",
    1001: "server going away (restart or shutdown)",
    1006: "connection lost",
    1009: "frame too large",
    1011: "server error",
    1013: "server busy, try again later",
  }[code] || "";
}
