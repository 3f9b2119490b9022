// Building DOM nodes without HTML strings: every text goes through textContent, so user data
// (job names, file names, error messages) can never become markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function fmtNumber(x) {
  return typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(4)) : "–";
}

export function statusBadge(status) {
  return el("span", { className: `badge status-${status}`, "data-status": status, text: status });
}

// A problem+json error as a list: the title, then each field at fault with its message.
export function problemView(err) {
  const box = el("div", { className: "problem", role: "alert" },
    el("strong", { text: err.title || "Error" }), err.detail ? el("p", { text: err.detail }) : null);
  if (err.errors && err.errors.length) {
    box.append(el("ul", {}, err.errors.map((e) =>
      el("li", { className: "problem-field" }, el("code", { text: e.field || "(body)" }), " ", e.message || ""))));
  }
  return box;
}
