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
      if (m.imageUrl) {
        body.append(Object.assign(document.createElement("img"), { src: m.imageUrl, alt: `image from ${m.author}` }));
      }
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

// An image goes to an upload URL (the file never passes through a function), then its storage
// id is posted as a message.
$("image").addEventListener("change", async (event) => {
  const file = event.target.files?.[0];
  event.target.value = "";
  if (!file) return;
  errorLine.textContent = "";
  const author = form.author.value.trim();
  if (!author) return showError(new Error("Enter your name first"));
  try {
    const uploadUrl = await client.mutation(api.messages.generateUploadUrl, {});
    const res = await fetch(uploadUrl, { method: "POST", headers: { "Content-Type": file.type }, body: file });
    if (!res.ok) throw new Error(`upload failed: ${(await res.json()).message}`);
    const { storageId } = await res.json();
    await client.mutation(api.messages.sendImage, { author, image: storageId });
  } catch (e) {
    showError(e);
  }
});

// Search: a live query of the search index while the box has text; its results update as
// matching messages arrive.
let stopSearch = () => {};
$("search").addEventListener("input", (event) => {
  stopSearch();
  const text = event.target.value.trim();
  const results = $("results");
  results.hidden = text === "";
  if (text === "") {
    results.replaceChildren();
    stopSearch = () => {};
    return;
  }
  stopSearch = client.onUpdate(
    api.messages.search,
    { text },
    (found) =>
      results.replaceChildren(
        ...found.map((m) => {
          const li = document.createElement("li");
          li.dataset.id = m._id;
          li.append(
            Object.assign(document.createElement("span"), { className: "author", textContent: m.author }),
            Object.assign(document.createElement("span"), { className: "body", textContent: m.body }),
          );
          return li;
        }),
      ),
    showError,
  );
});
$("search-form").addEventListener("submit", (event) => event.preventDefault());

$("summary").addEventListener("click", async () => {
  $("summary-text").textContent = await client.action(api.messages.summary, {}).catch((e) => `failed: ${e.message}`);
});
