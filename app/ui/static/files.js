// Uploaded files: the list, and an upload form (multipart `file` + `purpose`, checked by the API).

import { api } from "./api.js";
import { clear, el, fmtBytes, fmtTime, problemView } from "./dom.js";

// The API's FilePurpose values (app/files/checks.py); tests/ui/test_static.py keeps the two lists equal.
export const PURPOSES = ["dataset", "transfer_set", "teacher_weights", "teacher_onnx", "teacher_outputs",
  "teacher_torchscript", "teacher_hf"];

function fileRow(f) {
  return el("tr", { "data-file-id": f.id },
    el("td", { className: "filename", text: f.filename }), el("td", { text: f.purpose }),
    el("td", { className: "num", text: fmtBytes(f.size) }), el("td", { text: fmtTime(f.created_at) }),
    el("td", {}, el("code", { text: f.id })));
}

export async function renderFiles(view, { signal }) {
  const input = el("input", { type: "file", id: "upload-file", required: true });
  const purpose = el("select", { id: "upload-purpose", "aria-label": "purpose" },
    PURPOSES.map((p) => el("option", { value: p, text: p })));
  const upload = el("button", { type: "submit", id: "upload", className: "primary", text: "Upload" });
  const out = el("div", { id: "upload-result" });
  const tbody = el("tbody", { id: "files-body" });
  const form = el("form", { id: "upload-form", className: "toolbar" }, input, purpose, upload);
  clear(view).append(
    el("section", { className: "card" }, el("h1", { text: "Files" }),
      el("p", { className: "muted", text: "Datasets, transfer sets and teachers for your specs (refer to them by id)." }),
      form, out),
    el("section", { className: "card" }, el("table", { id: "files" },
      el("thead", {}, el("tr", {}, ["File", "Purpose", "Size", "Uploaded", "Id"].map((h) => el("th", { text: h })))),
      tbody)));

  const load = async () => {
    const list = await api("/v1/files", { signal });
    tbody.replaceChildren(...list.data.map(fileRow));
    if (!list.data.length) tbody.append(el("tr", {}, el("td", { colspan: "5", className: "empty", text: "No files yet." })));
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) return;
    const body = new FormData();
    body.append("purpose", purpose.value);
    body.append("file", input.files[0]);
    upload.disabled = true;
    out.replaceChildren(el("p", { className: "muted", text: "Uploading…" }));
    try {
      const f = await api("/v1/files", { method: "POST", body, signal });
      out.replaceChildren(el("p", { className: "ok", id: "upload-ok" }, "Uploaded ", el("code", { text: f.id }), "."));
      form.reset();
      await load();
    } catch (err) {
      out.replaceChildren(problemView(err));
    } finally {
      upload.disabled = false;
    }
  });
  try { await load(); } catch (err) { if (!signal.aborted) out.replaceChildren(problemView(err)); }
}
