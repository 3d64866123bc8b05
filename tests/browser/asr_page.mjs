// The ASR server's page at `/`: the API key asked for, a non-audio file refused visibly, a WAV
// file transcribed with timed segments, then a microphone recording (the fake mic plays `wav`)
// transcribed. Args: {url, key, wav, notAudio, artifacts}.
import { openPage, runScenario, scenarioArgs, screenshotter } from "./lib.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

async function transcript(page) {
  await page.waitForSelector("#result:not([hidden])", { timeout: 30000 });
  return page.evaluate(() => ({
    text: document.getElementById("text").textContent,
    rows: [...document.querySelectorAll("#segments tbody tr")].map(
      (tr) => [...tr.cells].map((td) => td.textContent)),
    summary: document.getElementById("summary").textContent,
    error: document.getElementById("error").hidden ? null : document.getElementById("error").textContent,
  }));
}

await runScenario(async (browser, pages) => {
  const page = await openPage(browser, args.url);
  pages.push(page);
  const result = {};
  // A server started with --api-key: listing the models is a 401, shown, and the key field opens.
  await page.waitForSelector("#error:not([hidden])");
  result.keyError = await page.textContent("#error");
  result.settingsOpen = await page.evaluate(() => document.getElementById("settings").open);
  await shot(page, "key-needed");
  await page.fill("#api-key", args.key);
  await page.dispatchEvent("#api-key", "change");
  await page.waitForFunction(() => document.getElementById("error").hidden
    && document.querySelector("#model option").value !== "whisper-1");
  result.models = await page.$$eval("#model option", (options) => options.map((o) => o.value));

  // Not audio: the server's JSON error message, visibly.
  await page.setInputFiles("#file", args.notAudio);
  await page.click("#submit");
  await page.waitForSelector("#error:not([hidden])", { timeout: 30000 });
  result.badError = await page.textContent("#error");
  result.resultHiddenOnError = await page.evaluate(() => document.getElementById("result").hidden);
  await shot(page, "not-audio-error");

  await page.setInputFiles("#file", args.wav);
  await page.selectOption("#language", "en");
  await page.click("#submit");
  result.file = await transcript(page);
  await shot(page, "file-transcript");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "file-transcript-phone");
  await page.setViewportSize({ width: 1100, height: 800 });

  // The microphone: the fake device plays the WAV once; MediaRecorder's webm goes up as it is.
  await page.click("#record");
  await page.waitForTimeout(4000);
  await page.click("#record");
  await page.waitForFunction(() => !document.getElementById("submit").disabled);
  result.recorded = await page.textContent("#source");
  await page.click("#submit");
  await page.waitForFunction(() => !document.getElementById("result").hidden
    || !document.getElementById("error").hidden, null, { timeout: 30000 });
  result.mic = await transcript(page).catch(async () => ({ error: await page.textContent("#error") }));
  await shot(page, "mic-transcript");
  result.logs = page.logs;
  return result;
}, { micWav: args.wav });
