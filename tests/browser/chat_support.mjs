// What the chat page says about the browser: on http://127.0.0.1 (a secure context) it must
// find WebCodecs Opus; with AudioEncoder removed, or outside a secure context, it must say
// why it cannot talk and keep Connect disabled. Also a phone-sized screenshot, and the API
// key field filled from the page URL's ?api_key=.
// Args: {url, artifacts}. RESULT: {normal, noEncoder, insecure}, each what the page reports.
import { runScenario, openPage, screenshotter, scenarioArgs } from "./lib.mjs";

const args = scenarioArgs();
const shot = screenshotter(args.artifacts);

async function report(page) {
  await page.waitForFunction(() => window.facClient && document.body.dataset.support);
  return {
    support: await page.evaluate(() => window.facClient.support),
    bannerVisible: await page.isVisible("#support"),
    banner: await page.textContent("#support"),
    connectDisabled: await page.isDisabled("#connect"),
    apiKey: await page.inputValue("#api-key"),
  };
}

await runScenario(async (browser, pages) => {
  const open = async (name, options, query = "") => {
    const page = await openPage(browser, args.url + query, options);
    pages.push(page);
    const result = await report(page);
    await shot(page, name);
    return result;
  };
  const normal = await open("supported", {}, "?api_key=page-key-1");
  const phone = await open("phone", { viewport: { width: 390, height: 780 } });
  const noEncoder = await open("no-audio-encoder", { initScript: () => { delete window.AudioEncoder; } });
  const insecure = await open("insecure", {
    initScript: () => Object.defineProperty(window, "isSecureContext", { value: false }),
  });
  return { normal, phone, noEncoder, insecure };
});
