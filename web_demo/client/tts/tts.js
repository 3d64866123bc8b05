// The TTS server's test page: text + voice -> POST /v1/audio/speech (a JSON body, as OpenAI's
// API) -> the encoded audio as a blob, played in the <audio> element.

import { $, failure, getJson, headers, keepApiKey, showError } from "/static/pages.js";

const form = $("form"), submit = $("submit"), statusLine = $("status");
const player = $("player");
// OpenAI's voice names: the default speaker, when the server lists no speakers of its own.
const OPENAI_VOICES = ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                       "shimmer", "verse"];

let audioUrl = null;

function fill(select, values, preferred, fromServer = true) {
  const kept = select.dataset.listed ? select.value : null;
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  select.value = values.includes(kept) ? kept : (preferred ?? values[0]);
  if (fromServer) select.dataset.listed = "1";
}

async function loadLists() {
  const problems = [];
  try {
    const body = await getJson("/api/speakers");
    const speakers = body.speakers.length ? body.speakers : OPENAI_VOICES;
    fill($("voice"), speakers, speakers.includes(body.default) ? body.default : speakers[0]);
  } catch (err) {
    if (!$("voice").dataset.listed) fill($("voice"), OPENAI_VOICES, undefined, false);
    problems.push(["the voices", err.message]);
  }
  try {
    const ids = (await getJson("/v1/models")).data.map((m) => m.id);
    if (ids.length) fill($("model"), ids);
  } catch (err) {
    problems.push(["the models", err.message]);
  }
  const same = problems.length === 2 && problems[0][1] === problems[1][1];  // e.g. both a 401
  const said = same ? [["the voices and models", problems[0][1]]] : problems;
  showError(said.length ? `Could not list ${said.map(([what, why]) => `${what}: ${why}`).join("; ")}` : "");
}

async function speak(event) {
  event.preventDefault();
  const format = $("format").value;
  const body = {
    model: $("model").value, input: $("text").value, voice: $("voice").value,
    response_format: format, speed: Number($("speed").value || 1),
  };
  if ($("instructions").value.trim()) body.instructions = $("instructions").value.trim();
  showError("");
  $("result").hidden = true;
  submit.disabled = true;
  statusLine.textContent = "synthesizing...";
  const started = performance.now();
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!response.ok) throw await failure(response);
    const blob = await response.blob();
    const seconds = (performance.now() - started) / 1000;
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(blob);
    $("download").href = audioUrl;
    $("download").download = `speech.${format === "opus" ? "ogg" : format}`;
    $("summary").textContent = `${format}, ${(blob.size / 1024).toFixed(1)} KiB in ${seconds.toFixed(2)} s`;
    player.src = audioUrl;
    $("result").hidden = false;
    statusLine.textContent = "";
    player.play().catch(() => { /* autoplay refused: the controls are there */ });
  } catch (err) {
    showError(`Synthesis failed: ${err.message}`);
    statusLine.textContent = "";
  } finally {
    submit.disabled = false;
  }
}

player.addEventListener("loadedmetadata", () => {
  if (Number.isFinite(player.duration)) {
    $("summary").textContent += `, ${player.duration.toFixed(2)} s of audio`;
  }
});
form.addEventListener("submit", speak);
keepApiKey(loadLists);
