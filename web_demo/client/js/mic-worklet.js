// AudioWorklet side of the microphone: turns the context's 128-sample render blocks into
// 20 ms frames at 24 kHz mono (the wire rate) and measures each frame's level. Resamples
// when the browser would not run the AudioContext at 24 kHz (then it runs at the device rate).

const WIRE_RATE = 24000;
const FRAME = 480; // 20 ms at 24 kHz: one Opus frame

class MicProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / WIRE_RATE; // input samples per output sample
    this.pos = 0;
    this.tail = 0;
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      if (this.step === 1) this.pushAll(input);
      else this.resample(input);
    }
    return true; // keep running while the node is connected
  }

  pushAll(block) {
    for (let i = 0; i < block.length; i++) this.push(block[i]);
  }

  // Linear interpolation: the input is speech for a speech model, whose useful band sits far
  // below the aliasing a better filter would remove. `pos` is the next output sample's
  // position in this block; -1 is the last sample of the previous block (`tail`).
  resample(block) {
    const at = (i) => (i < 0 ? this.tail : block[i]);
    while (this.pos < block.length - 1) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      this.push(at(i) * (1 - frac) + at(i + 1) * frac);
      this.pos += this.step;
    }
    this.pos -= block.length;
    this.tail = block[block.length - 1];
  }

  push(sample) {
    this.frame[this.filled++] = sample;
    if (this.filled === FRAME) {
      const pcm = this.frame;
      let sum = 0;
      for (let i = 0; i < FRAME; i++) sum += pcm[i] * pcm[i];
      this.port.postMessage({ pcm, rms: Math.sqrt(sum / FRAME) }, [pcm.buffer]);
      this.frame = new Float32Array(FRAME);
      this.filled = 0;
    }
  }
}

registerProcessor("fac-mic", MicProcessor);
