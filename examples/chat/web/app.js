// The chat page: the official `convex` browser client, talking to Kiln.
// The deployment is the one this page is served with (its origin), or `?deployment=<name>`.
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";
import { ConvexError } from "convex/values";

const api = anyApi;
const params = new URLSearchParams(window.location.search);
const deployment = params.get("deployment");
const url = deployment ? `${window.location.origin}/d/${deployment}` : window.location.origin;
const client = new ConvexClient(url);

const $ = (id) => document.getElementById(id);
const list = $("messages");
const form = $("send");
const errorLine = $("error");

form.author.value = localStorage.getItem("kiln-chat-author") ?? "";

function render(messages) {
  list.replaceChildren(
    ...messages.map((m) => {
      const li = document.createElement("li");
      li.dataset.id = m._id;
      const author = Object.assign(document.createElement("span"), { className: "author", textContent: m.author });
      const body = Object.assign(document.createElement("span"), { className: "body", textContent: m.body });
      const like = Object.assign(document.createElement("button"), { type: "button", textContent: `♥ ${m.likes}` });
      like.addEventListener("click", () => client.mutation(api.messages.like, { id: m._id }).catch(showError));
      li.append(author, body, like);
      return li;
    }),
  );
}

function showError(e) {
  errorLine.textContent = e instanceof ConvexError ? e.data.message : String(e.message ?? e);
}

client.onUpdate(api.messages.list, {}, render, showError);
client.client.subscribeToConnectionState?.((state) => {
  $("status").textContent = state.isWebSocketConnected ? "connected" : "reconnecting…";
  $("status").className = state.isWebSocketConnected ? "connected" : "";
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorLine.textContent = "";
  const author = form.author.value.trim();
  const body = form.body.value;
  localStorage.setItem("kiln-chat-author", author);
  form.body.value = "";
  try {
    await client.mutation(api.messages.send, { author, body });
  } catch (e) {
    showError(e);
  }
});

$("summary").addEventListener("click", async () => {
  $("summary-text").textContent = await client.action(api.messages.summary, {}).catch((e) => `failed: ${e.message}`);
});
