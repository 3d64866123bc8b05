// The conversation as the page shows it: which turn each server frame belongs to. A turn is
// one user utterance and the reply to it; the server marks replies only by their
// "[Processing...]" start and "\n[Final: ...]" end, and numbers them per connection (the
// latency report's `turn`). Every change is rendered through the ChatView.

export class Turns {
  constructor(view) {
    this.view = view;
    this.list = [];
    this.current = null; // the turn whose reply is arriving
    this.pending = null; // a turn the user is speaking, not answered yet
    this.byServerIndex = new Map(); // this connection's reply number -> turn
  }

  get last() {
    return this.list.at(-1) ?? null;
  }

  // The turn that reply audio and transcripts arriving now belong to.
  get active() {
    return this.current ?? this.last;
  }

  get speaking() {
    return this.pending?.user.state === "speaking";
  }

  // A new socket numbers its replies from 0 again.
  newConnection() {
    this.byServerIndex = new Map();
  }

  clear() {
    this.list = [];
    this.current = this.pending = null;
    this.view.clear();
  }

  userSpeaking() {
    this.pending ??= this.add();
    this.setUser(this.pending, "speaking");
  }

  userDone() {
    if (this.pending) this.setUser(this.pending, "waiting");
  }

  // "[Processing...]": the reply to the pending turn (or to speech the page did not see
  // start, e.g. the server's VAD heard it) begins.
  replyStarted() {
    if (this.current) this.finish(this.current, "interrupted");
    const turn = this.pending ?? this.add();
    this.pending = null;
    if (turn.user.state === "speaking") turn.user.state = "waiting";
    turn.serverIndex = this.byServerIndex.size;
    this.byServerIndex.set(turn.serverIndex, turn);
    turn.reply.status = "processing";
    this.current = turn;
    this.render(turn);
  }

  replyText(text) {
    const turn = this.current;
    if (!turn) return; // text of an interrupted reply still in flight
    turn.reply.text += text;
    turn.reply.status = "streaming"; // the text shows it: "Processing…" has done its job
    this.render(turn);
  }

  replyFinal(text) {
    const turn = this.current;
    if (!turn) return;
    turn.reply.text = text;
    turn.reply.final = text;
    this.finish(turn, "done");
  }

  // Barge-in or a lost connection: the reply stops where it is.
  interrupt() {
    if (this.current) this.finish(this.current, "interrupted");
  }

  transcript(text) {
    const turn = this.active;
    if (!turn || typeof text !== "string") return;
    turn.user.text = text;
    this.setUser(turn, text ? "heard" : "none");
  }

  latency({ turn: index, first_audio_ms, first_text_ms }) {
    const turn = this.byServerIndex.get(index);
    if (!turn) return;
    turn.reply.latency = { first_audio_ms, first_text_ms };
    this.render(turn);
  }

  queued(position) {
    const turn = this.current;
    if (!turn) return;
    turn.reply.status = position > 0 ? "queued" : "processing";
    turn.reply.queue = position;
    this.render(turn);
  }

  // Played reply audio, for the bubble's "n s audio" and the test hook's level.
  addAudio(samples, sumSquares, samples24k) {
    const turn = this.active;
    if (!turn) return;
    addLevel(turn.reply.audio, samples, sumSquares, samples24k);
    this.render(turn);
  }

  snapshot() {
    return this.list.map(({ id, serverIndex, user, reply }) => ({
      id, serverIndex, user: user.text, userState: user.state,
      reply: reply.text, final: reply.final, status: reply.status, latency: reply.latency,
      samples24k: reply.audio.samples24k, rms: reply.audio.rms,
    }));
  }

  add() {
    const turn = {
      id: this.list.length,
      serverIndex: null,
      user: { text: "", state: "waiting" },
      reply: { text: "", final: null, status: "none", queue: 0, latency: null, audio: newLevel() },
    };
    this.list.push(turn);
    return turn;
  }

  setUser(turn, state) {
    turn.user.state = state;
    this.render(turn);
  }

  finish(turn, status) {
    turn.reply.status = status;
    if (this.current === turn) this.current = null;
    this.render(turn);
  }

  render(turn) {
    this.view.render(turn);
  }
}

// An audio level accumulator: samples at the decoder's rate, their sum of squares, the same
// duration in 24 kHz samples, and the RMS so far.
export function newLevel() {
  return { samples: 0, sumSquares: 0, samples24k: 0, rms: 0 };
}

export function addLevel(level, samples, sumSquares, samples24k) {
  level.samples += samples;
  level.sumSquares += sumSquares;
  level.samples24k += samples24k;
  level.rms = Math.sqrt(level.sumSquares / level.samples);
}
