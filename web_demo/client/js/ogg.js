// Ogg pages for Opus (RFC 3533 framing, RFC 7845 mapping): a muxer for the microphone stream
// and a demuxer for the server's reply stream. The server wants whole pages of one continuous
// logical stream per connection (utils/opus.py split_ogg_pages), like opus-recorder sends:
// OpusHead and OpusTags pages, then 20 ms packets, two per page.

const CRC_TABLE = (() => {
  // Ogg's CRC-32: polynomial 0x04c11db7, not reflected, initial value 0, no final xor.
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let bit = 0; bit < 8; bit++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    table[i] = r >>> 0;
  }
  return table;
})();

export function crc32(bytes) {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ b) & 0xff]) >>> 0;
  return crc;
}

const HEADER_BYTES = 27;
const FLAG_CONTINUED = 0x01;
const FLAG_BOS = 0x02;
const MAX_SEGMENTS = 255;
export const GRANULE_RATE = 48000; // Ogg Opus counts granules at 48 kHz whatever the input rate
// libopus looks ahead 6.5 ms; the decoder skips that many 48 kHz samples at the start.
export const OPUS_PRE_SKIP = 312;

// One page carrying whole `packets` (Uint8Arrays): a 20 ms Opus packet is at most 1275 bytes,
// so two always fit and the muxer never continues a packet on the next page.
function buildPage({ packets, granule, serial, sequence, flags }) {
  const lacing = [];
  for (const p of packets) {
    for (let left = p.length; ; left -= 255) {
      lacing.push(Math.min(left, 255));
      if (left < 255) break;
    }
  }
  if (lacing.length > MAX_SEGMENTS) throw new Error("too many Ogg segments for one page");
  const bodyLength = packets.reduce((n, p) => n + p.length, 0);
  const page = new Uint8Array(HEADER_BYTES + lacing.length + bodyLength);
  const view = new DataView(page.buffer);
  page.set([0x4f, 0x67, 0x67, 0x53]); // "OggS"
  page[4] = 0; // version
  page[5] = flags;
  view.setBigInt64(6, BigInt(granule), true);
  view.setUint32(14, serial, true);
  view.setUint32(18, sequence, true);
  // bytes 22..25 (CRC) stay zero while the CRC is computed
  page[26] = lacing.length;
  page.set(lacing, HEADER_BYTES);
  let at = HEADER_BYTES + lacing.length;
  for (const p of packets) {
    page.set(p, at);
    at += p.length;
  }
  view.setUint32(22, crc32(page), true);
  return page;
}

export function opusHead({ channels = 1, inputRate = 24000, preSkip = OPUS_PRE_SKIP } = {}) {
  const head = new Uint8Array(19);
  const view = new DataView(head.buffer);
  head.set(new TextEncoder().encode("OpusHead"));
  head[8] = 1; // version
  head[9] = channels;
  view.setUint16(10, preSkip, true);
  view.setUint32(12, inputRate, true);
  view.setInt16(16, 0, true); // output gain
  head[18] = 0; // channel mapping family 0: mono or stereo
  return head;
}

export function opusTags(vendor = "fun-audio-chat web client") {
  const vendorBytes = new TextEncoder().encode(vendor);
  const tags = new Uint8Array(8 + 4 + vendorBytes.length + 4);
  const view = new DataView(tags.buffer);
  tags.set(new TextEncoder().encode("OpusTags"));
  view.setUint32(8, vendorBytes.length, true);
  tags.set(vendorBytes, 12);
  view.setUint32(12 + vendorBytes.length, 0, true); // no comments
  return tags;
}

// Muxes Opus packets into one logical Ogg stream. The header pages come out with the first
// packet's page, so a connection that never sends audio sends no pages at all.
export class OggOpusMuxer {
  constructor({ packetsPerPage = 2, serial = randomSerial(), inputRate = 24000 } = {}) {
    this.packetsPerPage = packetsPerPage;
    this.serial = serial;
    this.inputRate = inputRate;
    this.sequence = 0;
    this.granule = 0; // 48 kHz samples of every packet muxed so far
    this.pending = [];
    this.headersSent = false;
  }

  // `samples48k`: the packet's duration in 48 kHz samples. Returns the finished pages.
  addPacket(packet, samples48k) {
    const pages = this.headersSent ? [] : this.headerPages();
    this.pending.push(packet);
    this.granule += samples48k;
    if (this.pending.length >= this.packetsPerPage) pages.push(this.takePage());
    return pages;
  }

  // Closes the page in progress (end of a push-to-talk turn): audio is never held back.
  flush() {
    return this.pending.length ? [this.takePage()] : [];
  }

  headerPages() {
    this.headersSent = true;
    const head = opusHead({ inputRate: this.inputRate });
    return [
      this.page([head], 0, FLAG_BOS),
      this.page([opusTags()], 0, 0),
    ];
  }

  takePage() {
    const packets = this.pending;
    this.pending = [];
    return this.page(packets, this.granule, 0);
  }

  page(packets, granule, flags) {
    return buildPage({ packets, granule, serial: this.serial, sequence: this.sequence++, flags });
  }
}

function randomSerial() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

// Splits a byte stream into Ogg pages and reassembles packets that span pages. Pages may
// arrive several per frame (the server's writer emits one 40 ms packet per page).
export class OggDemuxer {
  constructor() {
    this.buffer = new Uint8Array(0);
    this.partial = []; // pieces of a packet continued on the next page
    this.pages = 0;
  }

  // Returns [{packet, granule}] for every packet completed by these bytes.
  push(bytes) {
    this.buffer = concat([this.buffer, bytes]);
    const packets = [];
    let pos = 0;
    for (;;) {
      const page = parsePage(this.buffer, pos);
      if (page === null) break;
      this.pages += 1;
      this.collect(page, packets);
      pos = page.end;
    }
    this.buffer = this.buffer.slice(pos);
    return packets;
  }

  collect(page, packets) {
    if (!(page.flags & FLAG_CONTINUED)) this.partial = []; // a lost continuation: drop it
    let at = page.bodyStart;
    let pieceStart = at;
    for (const lace of page.lacing) {
      at += lace;
      if (lace < 255) {
        this.partial.push(page.data.subarray(pieceStart, at));
        packets.push({ packet: concat(this.partial), granule: page.granule });
        this.partial = [];
        pieceStart = at;
      }
    }
    if (pieceStart < at) this.partial.push(page.data.subarray(pieceStart, at));
  }
}

// The page starting at `pos`, or null when it is not complete yet. Throws on bytes that are
// not an Ogg page: the stream cannot be resynchronised reliably, the caller reports it.
function parsePage(data, pos) {
  if (data.length - pos < HEADER_BYTES) return null;
  if (data[pos] !== 0x4f || data[pos + 1] !== 0x67 || data[pos + 2] !== 0x67 || data[pos + 3] !== 0x53) {
    throw new Error(`no Ogg page at byte ${pos}`);
  }
  const segments = data[pos + 26];
  const bodyStart = pos + HEADER_BYTES + segments;
  if (data.length < bodyStart) return null;
  const lacing = data.subarray(pos + HEADER_BYTES, bodyStart);
  const end = bodyStart + lacing.reduce((n, l) => n + l, 0);
  if (data.length < end) return null;
  const view = new DataView(data.buffer, data.byteOffset + pos, HEADER_BYTES);
  return {
    data, bodyStart, end, lacing,
    flags: data[pos + 5],
    granule: Number(view.getBigInt64(6, true)),
  };
}

export function concat(parts) {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const FRAME_SAMPLES_48K = [
  480, 960, 1920, 2880, 480, 960, 1920, 2880, 480, 960, 1920, 2880, // SILK 10/20/40/60 ms
  480, 960, 480, 960, // hybrid 10/20 ms
  120, 240, 480, 960, 120, 240, 480, 960, 120, 240, 480, 960, 120, 240, 480, 960, // CELT
];

// An Opus packet's duration in 48 kHz samples, from its TOC byte (RFC 6716 section 3.1).
export function opusPacketSamples48k(packet) {
  if (packet.length === 0) return 0;
  const perFrame = FRAME_SAMPLES_48K[packet[0] >> 3];
  const code = packet[0] & 0x03;
  if (code === 0) return perFrame;
  if (code === 1 || code === 2) return 2 * perFrame;
  return packet.length > 1 ? (packet[1] & 0x3f) * perFrame : 0;
}

export function isOpusHeader(packet) {
  if (packet.length < 8) return false;
  const magic = String.fromCharCode(...packet.subarray(0, 8));
  return magic === "OpusHead" || magic === "OpusTags";
}
