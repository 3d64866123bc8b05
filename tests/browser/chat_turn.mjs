// Shared steps of the chat-page scenarios (not a scenario itself).
import { waitForSnapshot, sleep } from "./lib.mjs";

export async function connect(page, { what = "connected", connects = 1 } = {}) {
  await waitForSnapshot(page, () => true, { what: "the test hook" });
  await page.click("#connect");
  return waitForSnapshot(page, (s, n) => s.state === "connected" && s.micOn && s.counters.connects >= n,
    { what, arg: connects });
}

// Holds the talk button (the mouse) for `holdMs`, screenshotting half way.
export async function holdTalk(page, holdMs, shot) {
  const box = await page.locator("#talk").boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await sleep(holdMs / 2);
  if (shot) await shot(page, "talking");
  await sleep(holdMs / 2);
  await page.mouse.up();
}

// Waits for turn `index` to have its final text and latency report.
export function waitForReply(page, index, timeout = 60000) {
  return waitForSnapshot(page,
    (s, i) => s.turns.length > i && s.turns[i].final !== null && s.turns[i].latency !== null,
    { what: `the final text and latency of turn ${index}`, timeout, arg: index });
}
