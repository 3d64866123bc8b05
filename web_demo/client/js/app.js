// The page: settings, buttons and meters around one ChatClient, and the read-only test hook
// `window.facClient`.

import { ChatClient } from "./client.js";
import { ChatView } from "./chat-view.js";
import { State } from "./connection.js";
import { levelToMeter } from "./mic.js";
import { checkSupport } from "./opus.js";
import { MAX_SYSTEM_PROMPT_CHARS } from "./protocol.js";

const $ = (id) => document.getElementById(id);
const STORE = { mode: "fac.mode", prompt: "fac.systemPrompt" };

const ui = {
  status: $("status"), connect: $("connect"), cancel: $("cancel"), restart: $("restart"), support: $("support"),
  error: $("error"), errorText: $("error-text"), errorClose: $("error-close"),
  apiKey: $("api-key"), prompt: $("system-prompt"), promptCount: $("prompt-count"),
  applyPrompt: $("apply-prompt"), talk: $("talk"), hint: $("hint"),
  micMeter: $("mic-meter"), outMeter: $("out-meter"), modes: document.getElementsByName("mode"),
};

const client = new ChatClient({ view: new ChatView($("chat")), onChange: changed });
let support = { ok: false, message: "checking the browser…" };

window.facClient = Object.freeze({
  get state() { return client.state; },
  get support() { return { ...support }; },
  snapshot: () => client.snapshot(),
});

function loadSettings() {
  const params = new URLSearchParams(window.location.search);
  ui.apiKey.value = params.get("api_key") || "";
  const mode = params.get("mode") || localStorage.getItem(STORE.mode) || "ptt";
  for (const radio of ui.modes) radio.checked = radio.value === mode;
  ui.prompt.value = localStorage.getItem(STORE.prompt) || "";
  Object.assign(client.settings, { mode, apiKey: ui.apiKey.value, systemPrompt: ui.prompt.value });
  countPrompt();
}

async function init() {
  loadSettings();
  bindControls();
  support = await checkSupport();
  if (!support.ok) {
    ui.support.textContent = support.message;
    ui.support.hidden = false;
  }
  document.body.dataset.support = support.ok ? "ok" : "missing";
  changed();
}

function bindControls() {
  // While a reconnect is scheduled, Connect tries at once and Cancel stops trying.
  ui.connect.onclick = () => (client.state === State.IDLE || client.state === State.WAITING
    ? client.connect() : client.disconnect());
  ui.cancel.onclick = () => client.disconnect();
  ui.restart.onclick = () => client.restart();
  ui.errorClose.onclick = () => (ui.error.hidden = true);
  ui.apiKey.onchange = () => (client.settings.apiKey = ui.apiKey.value.trim());
  ui.prompt.oninput = countPrompt;
  ui.applyPrompt.onclick = applyPrompt;
  for (const radio of ui.modes) radio.onchange = () => setMode(radio.value);
  bindTalk();
}

function bindTalk() {
  const { talk } = ui;
  talk.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    talk.setPointerCapture(e.pointerId);
    client.press();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    talk.addEventListener(type, () => client.release());
  }
  talk.addEventListener("contextmenu", (e) => e.preventDefault()); // long press on phones
  window.addEventListener("keydown", (e) => {
    if (e.code !== "Space" || typing(e.target)) return;
    e.preventDefault(); // no page scroll, no button click
    if (!e.repeat) client.press();
  });
  window.addEventListener("keyup", (e) => {
    if (e.code !== "Space" || typing(e.target)) return;
    e.preventDefault(); // a focused button would take the release as a click
    client.release();
  });
  window.addEventListener("blur", () => client.release()); // a key released elsewhere
}

function typing(target) {
  return target instanceof HTMLElement && target.matches("input, textarea, select, [contenteditable]");
}

function setMode(mode) {
  client.settings.mode = mode;
  localStorage.setItem(STORE.mode, mode);
  if (client.state !== State.IDLE) client.reconnect(); // hands-free is chosen in the URL (?vad=1)
  changed();
}

function applyPrompt() {
  const text = ui.prompt.value;
  localStorage.setItem(STORE.prompt, text);
  client.setSystemPrompt(text); // the server checks the length and answers with 0x05
}

function countPrompt() {
  const n = ui.prompt.value.length;
  ui.promptCount.textContent = `${n} / ${MAX_SYSTEM_PROMPT_CHARS}`;
  ui.promptCount.classList.toggle("over", n > MAX_SYSTEM_PROMPT_CHARS);
}

function changed(kind, detail) {
  if (kind === "level") return;
  if (kind === "error") showError(detail);
  renderStatus();
  renderTalk();
}

function showError(message) {
  ui.errorText.textContent = message;
  ui.error.hidden = false;
}

function renderStatus() {
  const status = client.lastStatus || { state: State.IDLE };
  const { state } = status;
  ui.status.dataset.state = state;
  ui.status.textContent = statusText(status);
  ui.connect.textContent = { [State.IDLE]: "Connect", [State.WAITING]: "Connect now" }[state] || "Disconnect";
  ui.cancel.hidden = state !== State.WAITING;
  ui.connect.disabled = !support.ok;
  ui.restart.disabled = state !== State.CONNECTED;
  document.body.dataset.state = state;
}

function statusText({ state, close, retryInMs, attempt }) {
  if (state === State.CONNECTED) return client.handsFree ? "Connected · hands-free" : "Connected";
  if (state === State.CONNECTING) return "Connecting…";
  if (state === State.WAITING) {
    const why = close?.reason ? ` (${close.reason})` : close ? ` (${close.code})` : "";
    return `Reconnecting in ${(retryInMs / 1000).toFixed(1)} s, try ${attempt}${why}`;
  }
  return close ? `Disconnected (${close.reason || close.code})` : "Disconnected";
}

function renderTalk() {
  const connected = client.state === State.CONNECTED && client.pipe !== null;
  ui.talk.disabled = !connected || client.handsFree;
  document.body.dataset.mode = client.settings.mode;
  const speaking = client.turns.speaking; // hands-free: the server's VAD heard speech start
  ui.talk.classList.toggle("active", client.talking || (client.handsFree && speaking));
  ui.talk.textContent = client.handsFree ? (speaking ? "Hearing you…" : "Hands-free: just speak")
    : client.talking ? "Listening… release to send" : "Hold to talk";
  ui.hint.textContent = client.handsFree
    ? "The server ends your turn after a pause; speak over the reply to interrupt it."
    : "Hold the button or the space bar while you speak; press during a reply to interrupt.";
}

function renderMeters() {
  const stats = client.stats;
  ui.micMeter.style.setProperty("--level", stats.micOn ? levelToMeter(stats.mic.rms) : 0);
  ui.outMeter.style.setProperty("--level", levelToMeter(stats.output.rms));
  requestAnimationFrame(renderMeters);
}

init();
requestAnimationFrame(renderMeters);
