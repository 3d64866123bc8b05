// Microphone capture: getUserMedia -> AudioWorklet (mic-worklet.js) -> 20 ms frames of
// float32 PCM at 24 kHz with their level. One Mic per connection: the microphone is on only
// while the page is connected.

const WORKLET_URL = new URL("./mic-worklet.js", import.meta.url);
const loaded = new WeakSet(); // contexts that have the worklet module (registering twice throws)

export class Mic {
  // `onFrame({pcm, rms})` gets every 20 ms frame (pcm: Float32Array(480) at 24 kHz).
  constructor(context, { onFrame }) {
    this.context = context;
    this.onFrame = onFrame;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.own = null; // a capture context of our own, where the shared one cannot take the mic
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const context = this.captureSource();
    if (!loaded.has(context)) {
      await context.audioWorklet.addModule(WORKLET_URL);
      loaded.add(context);
    }
    this.node = new AudioWorkletNode(context, "fac-mic", { numberOfOutputs: 0 });
    this.node.port.onmessage = (event) => this.onFrame(event.data);
    this.source.connect(this.node);
  }

  // The capture context's rate (the worklet resamples it to 24 kHz).
  get rate() {
    return (this.own ?? this.context).sampleRate;
  }

  // Chromium resamples the microphone into the 24 kHz context; Firefox refuses a stream
  // whose rate differs from the context's, so capture then runs in a context at the
  // device's rate of its own, and the worklet resamples.
  // Sets `this.source` and returns the context it lives in.
  captureSource() {
    try {
      this.source = this.context.createMediaStreamSource(this.stream);
      return this.context;
    } catch (err) {
      if (err.name !== "NotSupportedError") throw err;
    }
    this.own = new AudioContext();
    this.own.resume();
    this.source = this.own.createMediaStreamSource(this.stream);
    return this.own;
  }

  stop() {
    this.source?.disconnect();
    if (this.node) this.node.port.onmessage = null;
    this.stream?.getTracks().forEach((track) => track.stop());
    this.own?.close();
    this.stream = this.source = this.node = this.own = null;
  }
}

// Converts a frame's RMS to 0..1 for a meter (-60 dBFS .. 0 dBFS).
export function levelToMeter(rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  return Math.min(1, Math.max(0, (db + 60) / 60));
}
