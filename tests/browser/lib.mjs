// Shared by the browser scenarios: Debian's chromium under playwright-core, a WAV file as the
// microphone, console capture and screenshots. A scenario is `node <file>.mjs '<json args>'`;
// it prints one JSON line prefixed with RESULT and exits 0, or prints the error and exits 1.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

export function scenarioArgs() {
  return JSON.parse(process.argv[2] || "{}");
}

// `micWav`: the page's microphone plays this file (once, then silence, with `once`).
export async function launch({ micWav, once = true } = {}) {
  const args = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
  ];
  if (micWav) args.push(`--use-file-for-fake-audio-capture=${micWav}${once ? "%noloop" : ""}`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

// A page whose console and errors are kept (printed when the scenario fails). Options:
// `viewport` ({width, height}; a phone-sized one for layout checks), `initScript` (a
// function run in the page before its own scripts, e.g. to remove an API).
export async function openPage(browser, url, { viewport = { width: 1100, height: 800 }, initScript } = {}) {
  const context = await browser.newContext({ viewport });
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  page.logs = [];
  page.on("console", (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => page.logs.push(`[pageerror] ${e.message}`));
  await page.goto(url);
  return page;
}

export function screenshotter(dir) {
  mkdirSync(dir, { recursive: true });
  let n = 0;
  return async (page, name) => {
    n += 1;
    const path = join(dir, `${String(n).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path, fullPage: true });
    return path;
  };
}

// Runs `body(browser)`; prints RESULT <json> of what it returns, or the error and page logs.
export async function runScenario(body, options = {}) {
  const browser = await launch(options);
  const pages = [];
  try {
    const result = await body(browser, pages);
    console.log("RESULT " + JSON.stringify(result));
  } catch (err) {
    console.error(err && err.stack ? err.stack : String(err));
    for (const page of pages) console.error(page.logs.join("\n"));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

// ---- helpers for pages that expose a read-only test hook (the chat page: window.facClient)

// The hook's snapshot (`window.facClient.snapshot()`), a plain JSON-able object.
export function snapshot(page) {
  return page.evaluate(() => window.facClient.snapshot());
}

// Waits until `predicate(snapshot, arg)` (a function evaluated in the page) is true and
// returns that snapshot; on timeout the error says `what` and shows the last snapshot.
export async function waitForSnapshot(page, predicate, { what = "condition", timeout = 30000, arg } = {}) {
  const source = predicate.toString();
  try {
    const handle = await page.waitForFunction(
      ({ source, arg }) => {
        const snap = window.facClient && window.facClient.snapshot();
        // eslint-disable-next-line no-new-func
        return snap && new Function(`return (${source})`)()(snap, arg) ? snap : false;
      },
      { source, arg }, { timeout, polling: 20 });
    return await handle.jsonValue();
  } catch (err) {
    const last = await snapshot(page).catch(() => null);
    throw new Error(`timed out after ${timeout} ms waiting for ${what}; last snapshot: ` +
      JSON.stringify(last).slice(0, 3000));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Tells the test driving this scenario (over stdout) that `name` was reached, then waits for
// its one-line answer on stdin: a scenario that needs the test to act in the middle (e.g.
// restart the server) uses it; the test reads `STEP <name>` and writes a line back.
export async function step(name) {
  console.log(`STEP ${name}`);
  return readLine();
}

let stdinLines = null;
// stdin is read only while a step waits (paused otherwise, so it never keeps node alive).
function readLine() {
  if (stdinLines === null) {
    stdinLines = { buffered: [], waiting: [], text: "" };
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk) => {
      stdinLines.text += chunk;
      let nl;
      while ((nl = stdinLines.text.indexOf("\n")) >= 0) {
        const line = stdinLines.text.slice(0, nl);
        stdinLines.text = stdinLines.text.slice(nl + 1);
        const waiter = stdinLines.waiting.shift();
        if (waiter) waiter(line);
        else stdinLines.buffered.push(line);
      }
      if (!stdinLines.waiting.length) {
        process.stdin.pause();
        process.stdin.unref?.(); // a paused pipe still keeps node's loop alive otherwise
      }
    });
  }
  if (stdinLines.buffered.length) return Promise.resolve(stdinLines.buffered.shift());
  process.stdin.ref?.();
  process.stdin.resume();
  return new Promise((resolve) => stdinLines.waiting.push(resolve));
}
