// Reconnect after a server restart: connect, let the test stop the server (STEP connected),
// see the drop, let the test start it again (STEP dropped), wait for the page to reconnect
// on its own, then do a push-to-talk turn. Args: {url, micWav, holdMs, artifacts}.
import { runScenario, openPage, screenshotter, scenarioArgs, waitForSnapshot, snapshot, step } from "./lib.mjs";
import { connect, holdTalk, waitForReply } from "./chat_turn.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url);
  pages.push(page);
  await connect(page);
  await shot(page, "connected");
  await step("connected"); // the test stops the server
  // The status line is read in the same poll that sees the drop: the first retry fires 500 ms
  // later, and by the time a screenshot is taken on a loaded machine it may be "Connecting…".
  const dropped = await waitForSnapshot(page, (s) => {
    if (s.state !== "waiting" || s.counters.drops < 1) return false;
    s.statusText = document.querySelector("#status").textContent;
    return true;
  }, { what: "the drop" });
  const droppedStatus = dropped.statusText;
  await shot(page, "dropped");
  await step("dropped"); // the test starts the server again on the same port
  const back = await waitForSnapshot(page, (s) => s.state === "connected" && s.micOn && s.counters.connects === 2,
    { what: "the automatic reconnect", timeout: 60000 });
  await shot(page, "reconnected");
  await holdTalk(page, args.holdMs);
  await waitForReply(page, 0);
  await shot(page, "reply");
  const notices = await page.$$eval("#chat .notice", (nodes) => nodes.map((n) => n.textContent));
  return { dropped, droppedStatus, back, notices, final: await snapshot(page) };
}, { micWav: args.micWav });
