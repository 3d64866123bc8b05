// The TTS server's page at `/`: the API key asked for, empty text refused visibly with the
// server's message, then a sentence spoken into the <audio> element as a playable blob.
// Args: {url, key, text, artifacts}.
import { openPage, runScenario, scenarioArgs, screenshotter } from "./lib.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url);
  pages.push(page);
  const result = {};
  await page.waitForSelector("#error:not([hidden])");
  result.keyError = await page.textContent("#error");
  await shot(page, "key-needed");
  await page.fill("#api-key", args.key);
  await page.dispatchEvent("#api-key", "change");
  await page.waitForFunction(() => document.getElementById("error").hidden
    && document.querySelectorAll("#voice option").length > 1);
  result.voices = await page.$$eval("#voice option", (options) => options.map((o) => o.value));
  result.voice = await page.inputValue("#voice");
  result.models = await page.$$eval("#model option", (options) => options.map((o) => o.value));

  // Empty text: the server's 400 and its message, visibly; no audio.
  await page.fill("#text", "");
  await page.click("#submit");
  await page.waitForSelector("#error:not([hidden])", { timeout: 30000 });
  result.emptyError = await page.textContent("#error");
  result.resultHiddenOnError = await page.evaluate(() => document.getElementById("result").hidden);
  await shot(page, "empty-text-error");

  await page.fill("#text", args.text);
  await page.click("#submit");
  await page.waitForSelector("#result:not([hidden])", { timeout: 60000 });
  // Playable: the metadata loads from the blob and playback advances.
  await page.waitForFunction(() => {
    const player = document.getElementById("player");
    return player.readyState >= 1 && Number.isFinite(player.duration) && player.currentTime > 0.2;
  }, null, { timeout: 30000 });
  result.audio = await page.evaluate(() => {
    const player = document.getElementById("player");
    return { src: player.src, duration: player.duration, currentTime: player.currentTime,
             error: player.error && player.error.message, summary: document.getElementById("summary").textContent };
  });
  result.error = await page.evaluate(() => {
    const box = document.getElementById("error");
    return box.hidden ? null : box.textContent;
  });
  await page.evaluate(() => document.getElementById("player").pause());
  await shot(page, "spoken");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "spoken-phone");
  result.logs = page.logs;
  return result;
});
