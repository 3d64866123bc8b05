// Push-to-talk turn on the chat page: connect, hold the talk button while the fake
// microphone speaks `micWav`, release, wait for the reply (text and decoded audio).
// With `refuse24k`, the page's 24 kHz AudioContext refuses the microphone as Firefox's does
// (NotSupportedError), so capture runs at the device rate and the worklet resamples.
// Args: {url, micWav, holdMs, refuse24k, artifacts}. RESULT: the hook's snapshot once
// playback ended, and the bubbles on screen.
import { runScenario, openPage, screenshotter, scenarioArgs, waitForSnapshot, snapshot } from "./lib.mjs";
import { connect, holdTalk, waitForReply } from "./chat_turn.mjs";

const args = scenarioArgs();

function refuse24k() {
  const create = AudioContext.prototype.createMediaStreamSource;
  AudioContext.prototype.createMediaStreamSource = function (stream) {
    if (this.sampleRate === 24000) {
      throw new DOMException("different sample rates", "NotSupportedError");
    }
    return create.call(this, stream);
  };
}
const shot = screenshotter(args.artifacts);

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url, { initScript: args.refuse24k ? refuse24k : undefined });
  pages.push(page);
  await connect(page);
  await shot(page, "connected");
  await holdTalk(page, args.holdMs, shot);
  await waitForSnapshot(page, (s) => s.counters.replies === 1, { what: "[Processing...]" });
  await shot(page, "processing");
  await waitForReply(page, 0);
  await shot(page, "reply");
  await waitForSnapshot(page, (s) => !s.playing, { what: "the end of playback" });
  const bubbles = await page.$$eval("#chat .bubble", (nodes) => nodes.map((n) => ({
    role: n.classList.contains("user") ? "user" : "assistant",
    text: n.querySelector(".text").textContent, status: n.querySelector(".status").textContent,
    meta: n.querySelector(".meta").textContent,
  })));
  return { ...(await snapshot(page)), bubbles };
}, { micWav: args.micWav });
