// The conversation on screen: one user bubble and one assistant bubble per turn, plus
// notices (errors, connection changes). Renders turn objects that client.js owns.

const USER_PLACEHOLDER = {
  speaking: "Listening…",
  waiting: "…",
  heard: "",
  none: "(no transcript)",
};

export class ChatView {
  constructor(root) {
    this.root = root;
    this.nodes = new Map(); // turn id -> {user, reply} elements
  }

  render(turn) {
    let nodes = this.nodes.get(turn.id);
    if (!nodes) nodes = this.addTurn(turn);
    this.renderUser(nodes.user, turn.user);
    this.renderReply(nodes.reply, turn);
    this.scroll();
  }

  addTurn(turn) {
    const user = bubble("user");
    const reply = bubble("assistant");
    reply.hidden = true; // until its reply starts
    this.root.append(user, reply);
    const nodes = { user, reply };
    this.nodes.set(turn.id, nodes);
    return nodes;
  }

  renderUser(node, user) {
    const text = user.text || USER_PLACEHOLDER[user.state] || "";
    node.querySelector(".text").textContent = text;
    node.classList.toggle("pending", !user.text);
    node.dataset.state = user.state;
  }

  renderReply(node, turn) {
    const { reply } = turn;
    node.hidden = reply.status === "none";
    node.dataset.status = reply.status;
    node.querySelector(".text").textContent = reply.text;
    node.querySelector(".status").textContent = replyStatus(reply);
    node.querySelector(".meta").textContent = replyMeta(reply);
  }

  notice(kind, text) {
    const node = document.createElement("div");
    node.className = `notice ${kind}`;
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    node.textContent = text;
    this.root.append(node);
    this.scroll();
  }

  clear() {
    this.root.replaceChildren();
    this.nodes.clear();
  }

  scroll() {
    this.root.scrollTop = this.root.scrollHeight;
  }
}

function bubble(role) {
  const node = document.createElement("div");
  node.className = `bubble ${role}`;
  node.innerHTML = '<div class="status"></div><div class="text"></div><div class="meta"></div>';
  return node;
}

function replyStatus(reply) {
  if (reply.status === "queued") return `Waiting for a free slot (position ${reply.queue})`;
  if (reply.status === "processing") return "Processing"; // the style animates the dots
  if (reply.status === "interrupted") return "Interrupted";
  return "";
}

function replyMeta(reply) {
  const parts = [];
  const { latency } = reply;
  if (latency && latency.first_audio_ms != null) parts.push(`first audio ${Math.round(latency.first_audio_ms)} ms`);
  if (latency && latency.first_text_ms != null) parts.push(`first text ${Math.round(latency.first_text_ms)} ms`);
  if (reply.audio.samples24k > 0) parts.push(`${(reply.audio.samples24k / 24000).toFixed(1)} s audio`);
  return parts.join(" · ");
}
