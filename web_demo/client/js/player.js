// Reply playback: decoded PCM -> AudioBufferSourceNodes scheduled back to back on the
// AudioContext clock, after a small jitter buffer, through a gain (ducking) and an
// AnalyserNode that measures what actually comes out.

const JITTER_S = 0.1; // audio held back before a reply starts (or restarts after a gap)
const LATE_S = 0.005; // a chunk due sooner than this is late: restart the jitter buffer
const SILENT_RMS = 1e-4; // output below this counts as silence

export class Player {
  constructor(context) {
    this.context = context;
    this.gain = context.createGain();
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 256; // ~10 ms at 24 kHz: stop shows up within a poll or two
    this.gain.connect(this.analyser).connect(context.destination);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.sources = new Set();
    this.nextStart = 0; // context time at which the next chunk starts
    this.underruns = 0;
  }

  get playing() {
    return this.sources.size > 0;
  }

  // Seconds of audio scheduled but not yet played.
  get buffered() {
    return this.playing ? Math.max(0, this.nextStart - this.context.currentTime) : 0;
  }

  enqueue(pcm, sampleRate) {
    const buffer = this.context.createBuffer(1, pcm.length, sampleRate);
    buffer.copyToChannel(pcm, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    const now = this.context.currentTime;
    if (this.nextStart < now + LATE_S) {
      if (this.playing) this.underruns += 1;
      this.nextStart = now + JITTER_S;
    }
    source.start(this.nextStart);
    this.nextStart += buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      source.disconnect();
    };
  }

  // Barge-in: everything scheduled stops now; nothing queued plays later.
  stop() {
    for (const source of this.sources) {
      source.onended = null;
      source.stop();
      source.disconnect();
    }
    this.sources.clear();
    this.nextStart = 0;
    this.unduck();
  }

  // Mutes the output at once while keeping the schedule (a barge-in not yet confirmed).
  duck() {
    this.gain.gain.setValueAtTime(0, this.context.currentTime);
  }

  unduck() {
    this.gain.gain.setValueAtTime(1, this.context.currentTime);
  }

  // RMS of the most recent output (the analyser's window).
  outputRms() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    return Math.sqrt(sum / this.samples.length);
  }

  static isSilent(rms) {
    return rms < SILENT_RMS;
  }
}
