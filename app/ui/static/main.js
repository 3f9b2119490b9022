// The dashboard's entry point: sign-in with an API key, then a hash router over the views.

import { api, session, whenUnauthorized } from "./api.js";
import { renderFiles } from "./files.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { clear, problemView } from "./dom.js";
import { renderSubmit } from "./submit.js";

const view = document.getElementById("view");
const signin = document.getElementById("signin");
const nav = document.getElementById("nav");
let current = null;  // the AbortController of the view on screen: streams and timers stop with it

function showSignIn(message) {
  session.key = null;
  current?.abort();
  clear(view);
  nav.hidden = true;
  signin.hidden = false;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("api-key").focus();
}

function route() {
  if (!session.key) { showSignIn(); return; }
  signin.hidden = true;
  nav.hidden = false;
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.getAttribute("href") === `#/${parts[0] || "jobs"}`);
  const shown = parts[0] === "jobs" && parts[1] ? renderJob(view, { signal, jobId: decodeURIComponent(parts[1]) })
    : parts[0] === "submit" ? renderSubmit(view, { signal })
      : parts[0] === "files" ? renderFiles(view, { signal })
        : renderJobs(view, { signal, params });
  Promise.resolve(shown).catch((err) => { if (!signal.aborted) view.replaceChildren(problemView(err)); });
}

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("api-key");
  session.key = input.value.trim();
  input.value = "";
  try {
    await api("/v1/jobs?limit=1");  // proves the key before showing anything
  } catch (err) {
    showSignIn(err.status === 401 ? "That key was refused." : `Could not reach the API: ${err.message}`);
    return;
  }
  if (!location.hash || location.hash === "#/") location.hash = "#/jobs"; else route();
});
document.getElementById("sign-out").addEventListener("click", () => { showSignIn("Signed out."); });
whenUnauthorized(() => showSignIn("The API key was refused; sign in again."));
window.addEventListener("hashchange", route);
route();
