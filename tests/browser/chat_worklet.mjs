// No browser: runs the chat page's microphone worklet (web_demo/client/js/mic-worklet.js) in
// node with the AudioWorkletGlobalScope stubbed, at a context rate of `rate`, fed a sine of
// `hz` in 128-sample render blocks for `seconds`. RESULT: the 24 kHz frames it posted
// (count, length) and the largest difference from the ideal 24 kHz sine.
import { scenarioArgs } from "./lib.mjs";

const { rate, hz, seconds } = scenarioArgs();
const posted = [];
let Processor = null;
globalThis.sampleRate = rate;
globalThis.AudioWorkletProcessor = class {
  constructor() {
    this.port = { postMessage: (message) => posted.push(message) };
  }
};
globalThis.registerProcessor = (name, cls) => (Processor = cls);
await import("../../web_demo/client/js/mic-worklet.js");

const processor = new Processor();
const total = Math.round(rate * seconds);
for (let start = 0; start < total; start += 128) {
  const block = new Float32Array(128);
  for (let i = 0; i < 128; i++) block[i] = 0.5 * Math.sin((2 * Math.PI * hz * (start + i)) / rate);
  processor.process([[block]]);
}
let maxError = 0;
let n = 0;
for (const { pcm } of posted) {
  for (const sample of pcm) {
    maxError = Math.max(maxError, Math.abs(sample - 0.5 * Math.sin((2 * Math.PI * hz * n) / 24000)));
    n += 1;
  }
}
console.log("RESULT " + JSON.stringify({
  frames: posted.length, lengths: [...new Set(posted.map((m) => m.pcm.length))], samples: n, maxError,
  rms: posted.length ? posted[posted.length - 1].rms : null,
}));
