// Barge-in on the chat page: a push-to-talk turn (mouse), then, while its reply is audibly
// playing, the space bar is pressed (a new turn). Measures when the page's output (its
// AnalyserNode) went silent and whether any old reply audio played afterwards; the space bar
// is held `holdAfterMs`, then released, and the next reply is awaited.
// Args: {url, micWav, holdMs, holdAfterMs, playMs, artifacts}.
import { runScenario, openPage, screenshotter, scenarioArgs, waitForSnapshot, snapshot, sleep } from "./lib.mjs";
import { connect, holdTalk, waitForReply } from "./chat_turn.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url);
  pages.push(page);
  await connect(page);
  await holdTalk(page, args.holdMs);
  // Into the reply, at a moment its audio is loud at the output.
  await waitForSnapshot(page, (s) => s.turns.length > 0 && s.turns[0].samples24k > 0,
    { what: "reply audio", timeout: 60000 });
  await sleep(args.playMs);
  const before = await waitForSnapshot(page, (s) => s.output.rms > 0.02, { what: "loud reply output" });
  await shot(page, "reply-playing");
  await page.keyboard.down("Space");
  await sleep(args.holdAfterMs);
  const during = await snapshot(page);
  await shot(page, "barged-in");
  await page.keyboard.up("Space");
  const next = await waitForReply(page, 1);
  await shot(page, "next-reply");
  return { before, during, next };
}, { micWav: args.micWav });
