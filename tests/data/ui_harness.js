// A minimal DOM for the /ui page's script: elements by id, fetch recorded; events driven from the steps below.
const fs = require("fs");
const script = fs.readFileSync(process.argv[2], "utf8");
const calls = [];
const handlers = {};
function element(id) {
  return { id, value: "", checked: false, files: [], textContent: "", disabled: false, children: [],
           classList: { toggle() {} }, replaceChildren(...c) { this.children = c; },
           append(...c) { this.children.push(...c); } };
}
const els = {};
const ids = ["form", "index", "file", "k", "rerank", "only", "more", "status", "query", "results"];
for (const id of ids) els[id] = element(id);
els.k.value = "20"; els.rerank.checked = true; els.index.value = "flat";
global.document = {
  getElementById: (id) => els[id],
  createElement: (tag) => element(tag),
  addEventListener: (type, fn) => { handlers[type] = fn; },
  cookie: "",
};
global.Option = function (text, value) { return { text, value }; };
global.FormData = function () { this.parts = []; this.append = (...a) => this.parts.push(a); };
global.URL = { createObjectURL: (f) => `blob:${f.name}` };
global.location = { protocol: "http:" };
global.prompt = () => null;
global.fetch = async (url, init) => {
  calls.push({ url, method: (init && init.method) || "GET" });
  const body = url === "/" ? { indexes: ["flat"], classes: { flat: ["cat", "dog"] }, items: 3, name: "x" }
    : url.includes("/batch") ? { results: [{ query: "q", results: [] }] } : { query: "q", results: [] };
  return { ok: true, status: 200, json: async () => body };
};
const tick = () => new Promise((r) => setTimeout(r, 0));
(async () => {
  eval(script);
  await tick();
  const log = (step) => console.log(JSON.stringify({ step, calls: calls.splice(0), status: els.status.textContent }));
  log("load");
  const image = { name: "a.jpg", type: "image/jpeg" }, text = { name: "notes.txt", type: "text/plain" };
  let prevented = false;
  handlers.drop({ preventDefault: () => { prevented = true; }, dataTransfer: { files: [image] } });
  await tick(); await tick();
  log(prevented ? "drop" : "drop-not-prevented");
  els.k.value = "5"; els.k.onchange(); await tick(); await tick();
  log("k");
  handlers.drop({ preventDefault() {}, dataTransfer: { files: [text] } }); await tick();
  log("drop-text");
  handlers.paste({ clipboardData: { files: [image, { name: "b.png", type: "image/png" }] } });
  await tick(); await tick();
  log("paste-two");
  handlers.paste({ clipboardData: { files: [] } }); await tick();
  log("paste-text");
  els.index.onchange(); els.rerank.checked = false; els.rerank.onchange(); await tick();
  log("index-then-rerank");
})();
