// The annotation page: fetches the next item, takes a ranking (keys or drag) or an A/B verdict, posts it.
// Model text is only ever set through textContent, never parsed as HTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const taskBox = document.getElementById("task");
const progressBox = document.getElementById("progress");
let state = null;  // {item, order: display numbers best first, picked: how many placed by hand, unsafe: Set, choice}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function showProgress(p) {
  progressBox.textContent = `${p.labelled} labelled · ${p.remaining} left` + (p.skipped ? ` · ${p.skipped} skipped` : "");
}

function showMessage(text, isError = false) {
  let box = document.getElementById("message");
  if (!box) {
    box = el("p", {id: "message", role: "alert"});
    taskBox.prepend(box);
  }
  box.className = isError ? "error" : "note";
  box.textContent = text;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
  };
  const response = await fetch(path, {credentials: "same-origin", ...init});
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: `the server answered ${response.status}`}; }
  if (response.status === 401) { window.location.assign("/login"); throw new Error("signed out"); }
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

async function loadNext() {
  let data;
  try { data = await api("/api/next"); } catch (e) { showMessage(e.message, true); return; }
  showProgress(data.progress);
  if (!data.item) {
    state = null;
    taskBox.replaceChildren(el("h1", {text: "Nothing left to label"}),
                            el("p", {text: "Every item has all its labels or has been seen by you. Thank you!"}));
    return;
  }
  const k = data.item.responses.length;
  state = {item: data.item, order: [...Array(k).keys()].map(i => i + 1), picked: 0, unsafe: new Set(),
           choice: null, dragged: false};
  render();
}

function complete() {
  if (!state) return false;
  if (state.item.kind === "ab") return state.choice !== null;
  return state.dragged || state.picked >= state.order.length;
}

function rankOf(number) {
  const i = state.order.indexOf(number);
  return (state.dragged || i < state.picked) ? i + 1 : null;
}

function render() {
  const focused = document.activeElement && document.activeElement.id;
  draw();
  const again = focused && document.getElementById(focused);
  if (again) again.focus();
}

function draw() {
  const item = state.item;
  const turns = el("div", {class: "turns"});
  for (const [role, text] of item.turns) {
    turns.append(el("div", {class: `turn ${role}`}, el("span", {class: "role", text: role}),
                    el("pre", {text: text})));
  }
  const cards = el("div", {class: item.kind === "ab" ? "cards ab" : "cards"});
  item.responses.forEach((text, i) => {
    const number = i + 1;
    const unsafe = el("input", {type: "checkbox", id: `unsafe-${number}`});
    unsafe.checked = state.unsafe.has(number);
    unsafe.addEventListener("change", () => { toggleUnsafe(number, unsafe.checked); });
    let badge = "";
    if (item.kind === "ab") badge = state.choice === String(number) ? "chosen" : (state.choice === "tie" ? "tie" : "");
    else if (rankOf(number) !== null) badge = `rank ${rankOf(number)}`;
    cards.append(el("article", {class: "card" + (badge ? " marked" : ""), "data-number": number,
                                "aria-label": `Response ${number}`},
      el("h2", {text: `Response ${number}`}, el("span", {class: "badge", text: badge})),
      el("pre", {class: "response", text: text}),
      el("label", {class: "unsafe", for: `unsafe-${number}`}, unsafe, document.createTextNode(" unsafe"))));
  });
  const controls = el("div", {class: "controls"});
  if (item.kind === "ab") {
    for (const [value, label] of [["1", "1 is better"], ["2", "2 is better"], ["tie", "Equally good (T)"]]) {
      const b = el("button", {type: "button", class: "choice", id: `choice-${value}`, "data-choice": value, text: label,
                              "aria-pressed": String(state.choice === value)});
      b.addEventListener("click", () => choose(value));
      controls.append(b);
    }
  } else {
    controls.append(rankingList());
  }
  const comment = el("textarea", {id: "comment", rows: "2", maxlength: "2000", placeholder: "Comment (optional)",
                                  "aria-label": "Comment"});
  comment.value = state.comment || "";
  comment.addEventListener("input", () => { state.comment = comment.value; });
  const submit = el("button", {type: "button", id: "submit", text: "Submit (Enter)"});
  submit.disabled = !complete();
  submit.addEventListener("click", () => send());  // not `send` itself: the click event would be its `skip`
  const skip = el("button", {type: "button", id: "skip", text: "Skip (S)"});
  skip.addEventListener("click", () => send(true));
  const reset = el("button", {type: "button", id: "reset", text: "Start over (Esc)"});
  reset.addEventListener("click", startOver);
  const heading = item.kind === "ab" ? "Which response is better?" : "Rank the responses, best first";
  taskBox.replaceChildren(el("h1", {text: heading}), turns, cards, controls, comment,
                          el("div", {class: "buttons"}, submit, skip, reset));
}

function rankingList() {
  const list = el("ol", {id: "ranking", "aria-label": "Your ranking"});
  state.order.forEach((number, i) => {
    const placed = state.dragged || i < state.picked;
    const preview = state.item.responses[number - 1].slice(0, 80);
    const entry = el("li", {draggable: "true", "data-number": number, class: placed ? "placed" : "open"},
                     el("strong", {text: `${i + 1}. Response ${number}`}),
                     document.createTextNode(" " + preview));
    entry.addEventListener("dragstart", e => { e.dataTransfer.setData("text/plain", String(number)); });
    entry.addEventListener("dragover", e => { e.preventDefault(); });
    entry.addEventListener("drop", e => {
      e.preventDefault();
      move(Number(e.dataTransfer.getData("text/plain")), number);
    });
    list.append(entry);
  });
  return el("div", {class: "ranking"}, el("h2", {text: "Your ranking"}), list);
}

function move(dragged, target) {
  if (!dragged || dragged === target) return;
  const from = state.order.indexOf(dragged), to = state.order.indexOf(target);
  state.order.splice(from, 1);
  state.order.splice(to, 0, dragged);  // moving down lands after the target, moving up before it
  state.dragged = true;
  render();
}

function pick(number) {
  if (state.item.kind === "ab") { choose(String(number)); return; }
  if (state.dragged || state.order.indexOf(number) < state.picked) return;
  state.order.splice(state.order.indexOf(number), 1);
  state.order.splice(state.picked, 0, number);
  state.picked += 1;
  if (state.picked === state.order.length - 1) state.picked += 1;  // the last one places itself
  render();
}

function undo() {
  if (state.item.kind === "ab") { state.choice = null; render(); return; }
  if (state.dragged) { state.dragged = false; state.picked = 0; }
  else if (state.picked > 0) state.picked = state.picked === state.order.length ? state.picked - 2 : state.picked - 1;
  state.picked = Math.max(0, state.picked);
  render();
}

function startOver() {
  state.order.sort((a, b) => a - b);
  state.picked = 0; state.dragged = false; state.choice = null;
  render();
}

function choose(value) { state.choice = value; render(); }

function toggleUnsafe(number, on) {
  if (on) state.unsafe.add(number); else state.unsafe.delete(number);
  render();
}

let sending = false;
async function send(skip = false) {
  if (!state || sending || (!skip && !complete())) return;
  const body = {assignment: state.item.assignment, unsafe: [...state.unsafe].sort(), comment: state.comment || ""};
  if (skip) body.skip = true;
  else if (state.item.kind === "ab") body.choice = state.choice;
  else body.order = state.order;
  sending = true;
  try {
    const data = await api("/api/label", body);
    showProgress(data.progress);
    await loadNext();
  } catch (e) {
    showMessage(e.message, true);
  } finally {
    sending = false;
  }
}

document.addEventListener("keydown", e => {
  if (!state || e.target.closest("textarea, input[type=password]") || e.ctrlKey || e.metaKey || e.altKey) return;
  const digit = /^Digit([1-9])$/.exec(e.code) || /^Numpad([1-9])$/.exec(e.code);
  if (digit && Number(digit[1]) <= state.item.responses.length) {
    e.preventDefault();
    const number = Number(digit[1]);
    if (e.shiftKey) toggleUnsafe(number, !state.unsafe.has(number)); else pick(number);
  } else if (e.key === "Enter" && !e.target.closest("button, summary")) {  // those act on Enter themselves
    e.preventDefault(); send();
  } else if (e.key === "Backspace") {
    e.preventDefault(); undo();
  } else if (e.key === "Escape") {
    startOver();
  } else if (e.key === "s" || e.key === "S") {
    e.preventDefault(); send(true);
  } else if ((e.key === "t" || e.key === "T") && state.item.kind === "ab") {
    choose("tie");
  }
});

loadNext();
