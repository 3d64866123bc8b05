// Error frames on the chat page: a system prompt over the server's limit is applied while
// connected; the server answers with a 0x05 frame, which the page must show.
// Args: {url, promptChars, artifacts}. RESULT: the hook's errors and what the page displays.
import { runScenario, openPage, screenshotter, scenarioArgs, waitForSnapshot } from "./lib.mjs";
import { connect } from "./chat_turn.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url);
  pages.push(page);
  await connect(page);
  await page.click("#settings summary");
  await page.fill("#system-prompt", "x".repeat(args.promptChars));
  await shot(page, "long-prompt");
  await page.click("#apply-prompt");
  const snap = await waitForSnapshot(page, (s) => s.errors.length > 0, { what: "an error frame" });
  await shot(page, "error");
  return {
    errors: snap.errors,
    state: snap.state,
    banner: { visible: await page.isVisible("#error"), text: await page.textContent("#error-text") },
    notices: await page.$$eval("#chat .notice.error", (nodes) => nodes.map((n) => n.textContent)),
    counter: await page.textContent("#prompt-count"),
  };
});
