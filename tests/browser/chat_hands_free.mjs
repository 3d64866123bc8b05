// Hands-free turns on the chat page (the server's VAD, ?vad=1): choose the mode, connect and
// press nothing; the fake microphone speaks `micWav` and the server ends each turn after its
// silence. With `bargeIn`, the file speaks again while the first reply plays: the page must
// silence it (its own mic-level detection, confirmed by the server's VAD) and play the
// second reply. Args: {url, micWav, bargeIn, artifacts}. RESULT: the hook's snapshot after
// the last reply (`atBargeIn`: the one just after the barge-in), and the socket URLs.
import { runScenario, openPage, screenshotter, scenarioArgs, waitForSnapshot, snapshot, sleep } from "./lib.mjs";
import { connect, waitForReply } from "./chat_turn.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url);
  pages.push(page);
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await page.check('input[name="mode"][value="handsfree"]');
  await connect(page);
  await shot(page, "connected");
  await waitForSnapshot(page, (s) => s.vadEvents.includes("speech_started"), { what: "speech_started" });
  await shot(page, "speaking");
  let atBargeIn = null;
  if (args.bargeIn) {
    await waitForSnapshot(page, (s) => s.playing, { what: "the first reply playing", timeout: 60000 });
    await shot(page, "reply-playing");
    atBargeIn = await waitForSnapshot(page, (s) => s.bargeIn.stoppedAt !== null && s.dropping,
      { what: "a confirmed barge-in", timeout: 30000 });
    await sleep(300);
    await shot(page, "barged-in");
  }
  await waitForReply(page, args.bargeIn ? 1 : 0);
  await shot(page, "reply");
  await waitForSnapshot(page, (s) => !s.playing, { what: "the end of playback" });
  return { ...(await snapshot(page)), atBargeIn, sockets };
}, { micWav: args.micWav });
