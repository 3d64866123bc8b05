// What the ASR and TTS test pages share: the API key field (kept in sessionStorage: across
// reloads, gone with the tab), the one JSON error body, and the error box.

export const $ = (id) => document.getElementById(id);
const KEY_STORE = "fac-api-key";

// Request headers with the key from the page's key field, when one is typed.
export function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// The one JSON error body ({"error": {"message", "type", "code"}}) as a line; else the status.
export async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      message = `${response.status} ${body.error.type || "error"}: ${body.error.message}`;
    }
  } catch { /* not JSON: keep the status line */ }
  return new Error(message);
}

// GET a JSON body; a 401 opens the settings (where the key field is).
export async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) $("settings").open = true;
  if (!response.ok) throw await failure(response);
  return response.json();
}

export function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// Restores the key of this tab, and calls `reload` whenever it changes (and once now).
export function keepApiKey(reload) {
  const field = $("api-key");
  field.value = sessionStorage.getItem(KEY_STORE) || "";
  field.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, field.value.trim());
    reload();
  });
  reload();
}
