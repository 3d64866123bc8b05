// One conversation with the S2S server: the connection, the microphone -> Opus -> Ogg path,
// the Ogg -> Opus -> playback path, who ends turns (push-to-talk or the server's VAD) and
// barge-in. turns.js files what arrives into turns. The UI (app.js) calls connect /
// disconnect / press / release and hears back through `onChange`; `snapshot()` is what the
// read-only test hook exposes.

import { Connection, State } from "./connection.js";
import { Mic } from "./mic.js";
import { OggDemuxer, OggOpusMuxer, isOpusHeader, opusPacketSamples48k, GRANULE_RATE } from "./ogg.js";
import { OpusDecoder, OpusEncoder, WIRE_RATE } from "./opus.js";
import { Player } from "./player.js";
import { Turns, addLevel, newLevel } from "./turns.js";
import {
  Control, MsgType, PROCESSING_TEXT, chatUrl, encodeAudio, encodeControl, encodeMetadata, parseFinal,
} from "./protocol.js";

const PRE_ROLL_FRAMES = 15; // 300 ms kept before a press, so the first syllable is not cut
const BARGE_RMS = 0.02; // hands-free: mic level (about -34 dBFS) that counts as speech ...
const BARGE_FRAMES = 5; // ... for this many 20 ms frames in a row while the reply plays
const BARGE_CONFIRM_MS = 1000; // the server's VAD must agree within this, else playback resumes
const MONITOR_MS = 10; // output level poll

export class ChatClient {
  constructor({ view, onChange }) {
    this.view = view;
    this.onChange = onChange;
    this.settings = { mode: "ptt", apiKey: "", systemPrompt: "" };
    this.context = null;
    this.player = null;
    this.pipe = null; // per-connection: mic, encoder, muxer, demuxer, decoder
    this.generation = 0; // bumped when a connection's pipe is torn down
    this.talking = false;
    this.outChain = Promise.resolve(); // control frames and turn-end flushes, in order
    this.turns = new Turns(view);
    this.keepFromUs = 0; // decoded audio before this timestamp belongs to an interrupted reply
    this.dropping = false; // barge-in happened; drop audio until the next reply starts
    this.ducked = null; // a local barge-in waiting for the server's VAD: {timer}
    this.loudFrames = 0;
    this.outageSince = null; // when the socket dropped, while reconnecting
    this.stats = newStats();
    this.connection = new Connection({
      url: () => chatUrl(window.location, { apiKey: this.settings.apiKey, vad: this.handsFree }),
      onConnected: () => this.connected(),
      onFrame: (frame) => this.frame(frame),
      onStatus: (status) => this.status(status),
      diagnose: () => this.diagnose(),
    });
  }

  get handsFree() {
    return this.settings.mode === "handsfree";
  }

  get state() {
    return this.connection.state;
  }

  // ---- connection -------------------------------------------------------------------

  connect() {
    this.ensureAudio();
    this.connection.connect();
  }

  disconnect() {
    this.connection.disconnect();
  }

  // Settings that change the URL (the mode) apply to a new socket.
  reconnect() {
    this.teardown();
    this.connection.connect();
  }

  // The AudioContext needs a user gesture to start: the Connect click is one.
  ensureAudio() {
    if (!this.context) {
      this.context = makeContext();
      this.player = new Player(this.context);
      this.stats.audio.contextRate = this.context.sampleRate;
      setInterval(() => this.monitor(), MONITOR_MS);
    }
    this.context.resume();
  }

  async connected() {
    this.stats.counters.connects += 1;
    this.turns.newConnection();
    if (this.settings.systemPrompt) this.sendSystemPrompt(this.settings.systemPrompt);
    const generation = this.generation;
    let pipe;
    try {
      pipe = await this.openPipe();
    } catch (err) {
      this.error(`microphone or codec failed: ${err.message || err}`);
      this.disconnect();
      return;
    }
    if (generation !== this.generation) { // the socket went away while the mic opened
      closePipe(pipe);
      return;
    }
    this.pipe = pipe;
    this.stats.micOn = true;
    this.stats.mic.rate = pipe.mic.rate;
    this.changed();
  }

  async openPipe() {
    const pipe = {
      muxer: new OggOpusMuxer(),
      demuxer: new OggDemuxer(),
      preRoll: [],
      feeding: this.handsFree, // hands-free streams the microphone all the time
      decodeUs: 0, // timestamp of the next packet to decode
    };
    pipe.encoder = new OpusEncoder({
      onPacket: (packet, us) => this.sendPages(pipe, pipe.muxer.addPacket(packet, (us * GRANULE_RATE) / 1e6)),
      onError: (e) => this.error(`Opus encoder: ${e.message || e}`),
    });
    pipe.decoder = new OpusDecoder({
      onPcm: (pcm, rate, us) => this.decoded(pcm, rate, us),
      onError: (e) => this.error(`Opus decoder: ${e.message || e}`),
    });
    pipe.mic = new Mic(this.context, { onFrame: (frame) => this.micFrame(pipe, frame) });
    try {
      await pipe.mic.start();
    } catch (err) {
      closePipe(pipe);
      throw err;
    }
    return pipe;
  }

  status(status) {
    const { state, close, error } = status;
    if (state === State.WAITING || state === State.IDLE) this.teardown(close);
    if (close) this.stats.closes.push(close);
    if (error) this.error(error);
    if (state === State.WAITING) this.outage(status);
    if (state === State.CONNECTED && this.outageSince !== null) {
      const seconds = (performance.now() - this.outageSince) / 1000;
      this.view.notice("info", `Reconnected after ${seconds.toFixed(1)} s`);
    }
    if (state === State.CONNECTED || state === State.IDLE) this.outageSince = null;
    this.stats.state = state;
    this.lastStatus = status;
    this.changed();
  }

  // One notice per outage; the status line counts the attempts.
  outage({ close, wasConnected, retryInMs }) {
    this.stats.counters.drops += 1;
    if (this.outageSince !== null) return;
    this.outageSince = performance.now();
    const why = close ? ` (${close.code}${close.reason ? ": " + close.reason : ""})` : "";
    this.view.notice("info", `${wasConnected ? "Connection lost" : "Could not connect"}${why}; ` +
      `reconnecting in ${(retryInMs / 1000).toFixed(1)} s`);
  }

  teardown() {
    this.generation += 1;
    if (this.pipe) closePipe(this.pipe);
    this.pipe = null;
    this.stats.micOn = false;
    this.talking = false;
    this.player?.stop();
    this.turns.interrupt();
    this.turns.pending = null;
    this.dropping = false;
    this.keepFromUs = 0;
  }

  // A socket that failed before its handshake: a wrong API key looks the same as a server
  // that is down, so ask over plain HTTP (the key check answers 401 before any upgrade).
  async diagnose() {
    try {
      const headers = this.settings.apiKey ? { Authorization: `Bearer ${this.settings.apiKey}` } : {};
      const response = await fetch("/api/chat", { headers, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        return "the server refused the API key (fill in the API key field, then Connect)";
      }
    } catch {
      // the server is unreachable: retrying is right
    }
    return null;
  }

  // ---- microphone -> server -----------------------------------------------------------

  micFrame(pipe, { pcm, rms }) {
    if (pipe !== this.pipe) return; // still opening, or already closed
    this.stats.mic.rms = rms;
    this.stats.mic.frames += 1;
    this.detectBargeIn(rms);
    if (pipe.feeding) {
      pipe.encoder.encode(pcm);
      this.stats.counters.framesEncoded += 1;
    } else {
      pipe.preRoll.push(pcm);
      if (pipe.preRoll.length > PRE_ROLL_FRAMES) pipe.preRoll.shift();
    }
    this.onChange("level");
  }

  sendPages(pipe, pages) {
    if (pipe !== this.pipe) return;
    for (const page of pages) {
      if (this.connection.send(encodeAudio(page))) {
        this.stats.counters.pagesSent += 1;
        this.stats.counters.bytesSent += page.length;
      }
    }
  }

  sendControl(action) {
    this.connection.send(encodeControl(action));
  }

  sendSystemPrompt(text) {
    this.connection.send(encodeMetadata({ system_prompt: text }));
  }

  // restart (0x03 03): the server forgets the conversation; the page starts a fresh view.
  restart() {
    this.bargeIn("restart");
    this.sendControl(Control.RESTART);
    this.turns.clear();
    this.changed();
  }

  setSystemPrompt(text) {
    this.settings.systemPrompt = text;
    if (this.state === State.CONNECTED) this.sendSystemPrompt(text);
  }

  // Push-to-talk press: stops the answer at once, then (after any turn still being flushed)
  // starts a server turn and feeds the pre-roll and live microphone to the encoder.
  press() {
    if (this.handsFree || this.talking || !this.pipe) return;
    this.talking = true;
    this.bargeIn("talk");
    this.turns.userSpeaking();
    const pipe = this.pipe;
    this.queueOut(() => {
      if (pipe !== this.pipe || !this.talking) return;
      this.sendControl(Control.START);
      this.stats.counters.starts += 1;
      for (const pcm of pipe.preRoll) pipe.encoder.encode(pcm);
      pipe.preRoll = [];
      pipe.feeding = true;
    });
    this.changed();
  }

  // Release: the last audio leaves as whole pages, then pause ends the turn.
  release() {
    if (!this.talking) return;
    this.talking = false;
    const pipe = this.pipe;
    this.queueOut(async () => {
      if (!pipe || pipe !== this.pipe || !pipe.feeding) return;
      pipe.feeding = false;
      await pipe.encoder.flush();
      this.sendPages(pipe, pipe.muxer.flush());
      this.sendControl(Control.PAUSE);
      this.stats.counters.pauses += 1;
      this.turns.userDone();
      this.changed();
    });
    this.changed();
  }

  // Control frames and turn-end flushes leave in the order the user pressed and released.
  queueOut(step) {
    this.outChain = this.outChain.then(step)
      .catch((err) => this.error(`sending the turn failed: ${err.message || err}`));
  }

  // ---- barge-in -----------------------------------------------------------------------

  // Stops local playback now (the server stops on its own when it sees start or speech) and
  // drops the interrupted reply's audio still in flight, until the next reply starts.
  bargeIn(source) {
    const confirming = this.ducked !== null; // the local detection already marked this one
    this.clearDuck();
    const answering = this.turns.current !== null || this.player.playing;
    if (!answering) return;
    this.player.stop();
    this.keepFromUs = Infinity;
    this.dropping = true;
    if (!confirming) this.markBargeIn(source);
    this.turns.interrupt();
  }

  markBargeIn(source) {
    const b = this.stats.bargeIn;
    Object.assign(b, { at: performance.now(), source, stoppedAt: null, maxRmsAfterStop: 0 });
    b.count += 1;
  }

  // Hands-free: speech on the microphone while the reply plays mutes it at once; the
  // server's VAD event confirms (hard stop) or the timer restores the reply.
  detectBargeIn(rms) {
    if (!this.handsFree || !this.player?.playing || this.dropping) {
      this.loudFrames = 0;
      return;
    }
    this.loudFrames = rms >= BARGE_RMS ? this.loudFrames + 1 : 0;
    if (this.loudFrames < BARGE_FRAMES || this.ducked) return;
    this.player.duck();
    this.markBargeIn("mic");
    this.ducked = {
      timer: setTimeout(() => {
        this.ducked = null;
        this.player.unduck();
        Object.assign(this.stats.bargeIn, { at: null, stoppedAt: null });
        this.stats.bargeIn.falseAlarms += 1;
      }, BARGE_CONFIRM_MS),
    };
  }

  clearDuck() {
    if (!this.ducked) return;
    clearTimeout(this.ducked.timer);
    this.ducked = null;
  }

  // ---- server -> page -----------------------------------------------------------------

  frame(frame) {
    this.stats.counters.framesReceived += 1;
    if (frame.type === MsgType.AUDIO) this.audio(frame.payload);
    else if (frame.type === MsgType.TEXT) this.text(frame.text);
    else if (frame.type === MsgType.METADATA) this.extra(frame.data);
    else if (frame.type === MsgType.ERROR) this.error(frame.text, "server");
    else if (frame.type === MsgType.PING) this.stats.counters.pings += 1;
  }

  audio(ogg) {
    const pipe = this.pipe;
    if (!pipe) return;
    let packets;
    try {
      packets = pipe.demuxer.push(ogg);
    } catch (err) {
      pipe.demuxer = new OggDemuxer();
      this.error(`reply audio is not Ogg: ${err.message}`);
      return;
    }
    for (const { packet } of packets) {
      if (isOpusHeader(packet)) continue;
      // Every packet is decoded, dropped or not, so the decoder's state stays continuous.
      pipe.decoder.decode(packet, pipe.decodeUs);
      pipe.decodeUs += Math.round((opusPacketSamples48k(packet) * 1e6) / GRANULE_RATE);
      this.stats.counters.packetsReceived += 1;
    }
  }

  decoded(pcm, rate, us) {
    const samples24k = Math.round((pcm.length * WIRE_RATE) / rate);
    if (us < this.keepFromUs) {
      this.stats.droppedSamples24k += samples24k;
      return;
    }
    this.player.enqueue(pcm, rate);
    const sum = sumOfSquares(pcm);
    addLevel(this.stats.reply, pcm.length, sum, samples24k);
    this.turns.addAudio(pcm.length, sum, samples24k);
  }

  text(text) {
    if (text === PROCESSING_TEXT) return this.replyStarted();
    const final = parseFinal(text);
    if (final !== null) this.turns.replyFinal(final);
    else this.turns.replyText(text);
    this.changed();
  }

  // "[Processing...]" opens every reply; after a barge-in it is where new audio begins.
  replyStarted() {
    if (this.dropping) {
      this.keepFromUs = this.pipe ? this.pipe.decodeUs : 0;
      this.dropping = false;
    }
    this.turns.replyStarted();
    this.stats.counters.replies += 1;
    this.changed();
  }

  extra(data) {
    if (!data) return;
    if (data.type === "transcript") this.turns.transcript(data.text);
    else if (data.type === "latency") this.turns.latency(data);
    else if (data.type === "queue") this.turns.queued(data.position);
    else if (data.type === "vad") this.vad(data);
    this.changed();
  }

  vad({ event, ...settings }) {
    this.stats.vadEvents.push(event);
    if (event === "settings") {
      this.stats.vad = settings;
    } else if (event === "speech_started") {
      this.bargeIn("vad");
      this.turns.userSpeaking();
    } else if (event === "speech_stopped") {
      this.turns.userDone();
    }
  }

  // `source` "server": a 0x05 frame; "page": something failed here.
  error(message, source = "page") {
    this.stats.errors.push(message);
    const shown = `${source === "server" ? "Server error" : "Error"}: ${message}`;
    this.view.notice("error", shown);
    this.onChange("error", shown);
  }

  changed() {
    this.onChange("state");
  }

  // ---- output level (what the test hook reads as "playback stopped") ------------------

  monitor() {
    const rms = this.player.outputRms();
    const out = this.stats.output;
    out.rms = rms;
    out.maxRms = Math.max(out.maxRms, rms);
    if (!Player.isSilent(rms)) out.lastAudibleAt = performance.now();
    const b = this.stats.bargeIn;
    if (b.at !== null && b.stoppedAt === null && Player.isSilent(rms)) b.stoppedAt = performance.now();
    if (b.stoppedAt !== null && this.dropping) b.maxRmsAfterStop = Math.max(b.maxRmsAfterStop, rms);
  }

  // A copy of the counters, turns and timestamps for the test hook.
  snapshot() {
    return structuredClone({
      ...this.stats,
      mode: this.settings.mode,
      talking: this.talking,
      playing: this.player?.playing ?? false,
      buffered: this.player?.buffered ?? 0,
      dropping: this.dropping,
      now: performance.now(),
      turns: this.turns.snapshot(),
    });
  }
}

function newStats() {
  return {
    state: State.IDLE,
    micOn: false,
    counters: {
      connects: 0, drops: 0, framesEncoded: 0, pagesSent: 0, bytesSent: 0, starts: 0, pauses: 0,
      framesReceived: 0, packetsReceived: 0, pings: 0, replies: 0,
    },
    mic: { rms: 0, frames: 0, rate: null },
    audio: { contextRate: null },
    reply: newLevel(), // decoded reply audio that was played
    droppedSamples24k: 0, // decoded reply audio of interrupted replies, not played
    vad: null, // the server's VAD settings (hands-free)
    output: { rms: 0, maxRms: 0, lastAudibleAt: null },
    bargeIn: { at: null, source: null, stoppedAt: null, maxRmsAfterStop: 0, count: 0, falseAlarms: 0 },
    vadEvents: [],
    errors: [],
    closes: [],
  };
}

// 24 kHz is the wire rate: the worklet then has nothing to resample. Browsers that refuse
// that rate get their default one, and the worklet resamples.
function makeContext() {
  try {
    return new AudioContext({ sampleRate: WIRE_RATE, latencyHint: "interactive" });
  } catch {
    return new AudioContext({ latencyHint: "interactive" });
  }
}

function sumOfSquares(pcm) {
  let sum = 0;
  for (const s of pcm) sum += s * s;
  return sum;
}

function closePipe(pipe) {
  pipe.mic.stop();
  pipe.encoder.close();
  pipe.decoder.close();
}
