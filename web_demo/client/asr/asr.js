// The ASR server's test page: a file or a microphone recording -> POST /v1/audio/transcriptions
// (multipart, response_format=verbose_json, as OpenAI's API) -> the text and its timed segments.
// The server decodes webm/ogg/mp4 uploads itself, so MediaRecorder's output is sent as it is.

import { $, failure, getJson, headers, keepApiKey, showError } from "/static/pages.js";

const form = $("form"), fileInput = $("file"), recordButton = $("record"), preview = $("preview");
const submit = $("submit"), statusLine = $("status");

let audio = null;  // {blob, name}: what Transcribe sends, the latest file chosen or recording made
let recorder = null;
let previewUrl = null;

const size = (bytes) => (bytes < 1024 ? `${bytes} bytes` : `${(bytes / 1024).toFixed(1)} KiB`);

function setAudio(blob, name, origin) {
  audio = blob ? { blob, name } : null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = blob ? URL.createObjectURL(blob) : null;
  preview.hidden = !blob;
  if (blob) preview.src = previewUrl; else preview.removeAttribute("src");
  $("source").textContent = blob ? `${origin}: ${name}, ${size(blob.size)}` : "";
  submit.disabled = !blob || recorder !== null;
}

async function loadModels() {
  const select = $("model");
  try {
    const ids = (await getJson("/v1/models")).data.map((m) => m.id);
    if (!ids.length) return;
    const kept = select.value;
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(kept)) select.value = kept;
    showError("");
  } catch (err) {
    showError(`Could not list the models: ${err.message}`);
  }
}

function recordingType() {
  for (const type of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4", "audio/webm"]) {
    if (MediaRecorder.isTypeSupported(type)) return type;
  }
  return "";
}

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  showError("");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("Recording needs a browser with MediaRecorder and a page on https:// (start the server "
      + "with --ssl-certfile and --ssl-keyfile) or on localhost.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(`No microphone: ${err.message}`);
    return;
  }
  const type = recordingType();
  recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const parts = [];
  recorder.ondataavailable = (event) => { if (event.data.size) parts.push(event.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    const blobType = recorder.mimeType || type || "audio/webm";
    recorder = null;
    recordButton.textContent = "Record";
    recordButton.classList.remove("recording");
    recordButton.setAttribute("aria-pressed", "false");
    fileInput.value = "";
    const ext = blobType.includes("ogg") ? "ogg" : blobType.includes("mp4") ? "m4a" : "webm";
    setAudio(new Blob(parts, { type: blobType }), `recording.${ext}`, "recorded");
    statusLine.textContent = "";
  };
  recorder.start();
  recordButton.textContent = "Stop";
  recordButton.classList.add("recording");
  recordButton.setAttribute("aria-pressed", "true");
  submit.disabled = true;
  statusLine.textContent = "recording...";
}

function clock(seconds) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const m = Math.floor(ms / 60000), s = Math.floor(ms / 1000) % 60;
  return `${m}:${String(s).padStart(2, "0")}.${String(ms % 1000).padStart(3, "0")}`;
}

function showResult(body, seconds) {
  $("text").textContent = body.text || "(no speech heard)";
  const rows = (body.segments || []).map((segment) => {
    const row = document.createElement("tr");
    for (const [value, cls] of [[segment.id + 1, ""], [clock(segment.start), "time"],
                                [clock(segment.end), "time"], [segment.text.trim(), ""]]) {
      const cell = row.insertCell();
      cell.textContent = value;
      if (cls) cell.className = cls;
    }
    return row;
  });
  $("segments").tBodies[0].replaceChildren(...rows);
  $("segments").hidden = !rows.length;
  $("summary").textContent = `language ${body.language}, ${body.duration.toFixed(2)} s of audio, `
    + `${rows.length} segment${rows.length === 1 ? "" : "s"}, answered in ${seconds.toFixed(2)} s`;
  $("result").hidden = false;
}

async function transcribe(event) {
  event.preventDefault();
  if (!audio) return;
  const data = new FormData();
  data.append("file", audio.blob, audio.name);
  data.append("model", $("model").value);
  data.append("response_format", "verbose_json");
  data.append("timestamp_granularities[]", "segment");
  if ($("language").value) data.append("language", $("language").value);
  if ($("hotwords").value.trim()) data.append("hotwords", $("hotwords").value.trim());
  showError("");
  $("result").hidden = true;
  submit.disabled = true;
  statusLine.textContent = "transcribing...";
  const started = performance.now();
  try {
    const response = await fetch("/v1/audio/transcriptions", { method: "POST", headers: headers(), body: data });
    if (!response.ok) throw await failure(response);
    showResult(await response.json(), (performance.now() - started) / 1000);
    statusLine.textContent = "";
  } catch (err) {
    showError(`Transcription failed: ${err.message}`);
    statusLine.textContent = "";
  } finally {
    submit.disabled = !audio;
  }
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  setAudio(file || null, file ? file.name : "", "file");
});
recordButton.addEventListener("click", toggleRecording);
form.addEventListener("submit", transcribe);
keepApiKey(loadModels);
