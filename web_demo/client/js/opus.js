// WebCodecs Opus at the wire format (24 kHz mono, 20 ms frames) and the check that the
// browser has it. Ogg framing lives in ogg.js.

export const WIRE_RATE = 24000;
export const FRAME_SAMPLES = 480; // 20 ms at 24 kHz

const ENCODER_CONFIG = {
  codec: "opus",
  sampleRate: WIRE_RATE,
  numberOfChannels: 1,
  bitrate: 32000,
  // DTX off: the server expects a packet for every 20 ms, silence included.
  opus: { format: "opus", frameDuration: 20000, application: "voip", signal: "voice", usedtx: false },
};
const DECODER_CONFIG = { codec: "opus", sampleRate: WIRE_RATE, numberOfChannels: 1 };

// {ok, message}: whether this page can talk at all. WebCodecs and getUserMedia exist only in
// secure contexts (https, or http://localhost / 127.0.0.1).
export async function checkSupport() {
  if (!window.isSecureContext) {
    return {
      ok: false, secure: false, opus: false,
      message: "This page is not a secure context, so the browser hides the microphone and " +
        "WebCodecs. Open it over https (start the server with --ssl-certfile/--ssl-keyfile; " +
        "scripts/make_cert.sh makes a certificate) or as http://localhost.",
    };
  }
  const missing = [];
  if (typeof AudioEncoder === "undefined" || !(await configSupported(AudioEncoder, ENCODER_CONFIG))) {
    missing.push("an Opus encoder (WebCodecs AudioEncoder)");
  }
  if (typeof AudioDecoder === "undefined" || !(await configSupported(AudioDecoder, DECODER_CONFIG))) {
    missing.push("an Opus decoder (WebCodecs AudioDecoder)");
  }
  if (!navigator.mediaDevices?.getUserMedia) missing.push("microphone access (getUserMedia)");
  if (typeof AudioWorkletNode === "undefined") missing.push("AudioWorklet");
  if (missing.length) {
    return {
      ok: false, secure: true, opus: false,
      message: `This browser lacks ${missing.join(", ")}. Use a current Chrome, Edge or Firefox.`,
    };
  }
  return { ok: true, secure: true, opus: true, message: "" };
}

async function configSupported(Codec, config) {
  try {
    return (await Codec.isConfigSupported(config)).supported === true;
  } catch {
    return false;
  }
}

// 20 ms PCM frames in, Opus packets out (`onPacket(Uint8Array, durationUs)`), in order.
export class OpusEncoder {
  constructor({ onPacket, onError }) {
    this.samples = 0; // timestamps count the audio fed, so they stay monotonic
    this.encoder = new AudioEncoder({
      output: (chunk) => {
        const packet = new Uint8Array(chunk.byteLength);
        chunk.copyTo(packet);
        onPacket(packet, chunk.duration ?? 20000);
      },
      error: (e) => onError(e),
    });
    this.encoder.configure(ENCODER_CONFIG);
  }

  encode(pcm) {
    const data = new AudioData({
      format: "f32", sampleRate: WIRE_RATE, numberOfChannels: 1, numberOfFrames: pcm.length,
      timestamp: Math.round((this.samples * 1e6) / WIRE_RATE), data: pcm,
    });
    this.samples += pcm.length;
    this.encoder.encode(data);
    data.close();
  }

  // Resolves once every packet of the audio fed so far has gone to onPacket.
  flush() {
    return this.encoder.state === "configured" ? this.encoder.flush() : Promise.resolve();
  }

  close() {
    if (this.encoder.state !== "closed") this.encoder.close();
  }
}

// Opus packets in, float32 PCM out (`onPcm(Float32Array, sampleRate, timestampUs)`). The
// decoder may run at another rate than 24 kHz (Chromium decodes Opus at 48 kHz).
export class OpusDecoder {
  constructor({ onPcm, onError }) {
    this.decoder = new AudioDecoder({
      output: (audio) => {
        const pcm = new Float32Array(audio.numberOfFrames);
        audio.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
        onPcm(pcm, audio.sampleRate, audio.timestamp);
        audio.close();
      },
      error: (e) => onError(e),
    });
    this.decoder.configure(DECODER_CONFIG);
  }

  decode(packet, timestampUs) {
    this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: timestampUs, data: packet }));
  }

  close() {
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}
