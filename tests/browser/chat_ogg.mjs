// No browser: runs the chat page's Ogg code (web_demo/client/js/ogg.js) in node. Demuxes the
// Ogg/Opus stream in `input` (fed in `sliceBytes` pieces, as frames may split it anywhere) and
// muxes its audio packets again, 2 per page, into `output`, the way the page sends its
// microphone. Args: {input, output, sliceBytes, serial}. RESULT: packet and page counts.
import { readFileSync, writeFileSync } from "node:fs";
import { OggDemuxer, OggOpusMuxer, concat, isOpusHeader, opusPacketSamples48k } from
  "../../web_demo/client/js/ogg.js";
import { scenarioArgs } from "./lib.mjs";

const args = scenarioArgs();
const input = new Uint8Array(readFileSync(args.input));
const demuxer = new OggDemuxer();
const muxer = new OggOpusMuxer({ serial: args.serial });
const pages = [];
let headers = 0;
const durations = [];
for (let at = 0; at < input.length; at += args.sliceBytes) {
  for (const { packet } of demuxer.push(input.subarray(at, at + args.sliceBytes))) {
    if (isOpusHeader(packet)) {
      headers += 1;
      continue;
    }
    durations.push(opusPacketSamples48k(packet));
    pages.push(...muxer.addPacket(packet, opusPacketSamples48k(packet)));
  }
}
pages.push(...muxer.flush());
writeFileSync(args.output, concat(pages));
console.log("RESULT " + JSON.stringify({
  inputPages: demuxer.pages, headers, packets: durations.length, outputPages: pages.length,
  durations: [...new Set(durations)], granule: muxer.granule,
}));
