// Cohort builder: groups of behaviour and profile rows that write the definition language into
// the form's `definition` field, and a live count fetched from the server as the rows change.
// The JSON field stays editable; the builder writes it only after the person touches a row.
"use strict";
(function () {
  const root = document.getElementById("builder");
  if (!root) return;
  const field = document.getElementById("definition");
  const groups = document.getElementById("groups");
  const top = document.getElementById("top-combinator");
  const csrf = root.dataset.csrf;
  let counter = 0;

  function labelled(text, element) {
    const id = "b" + ++counter;
    element.id = id;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = text;
    return [label, element];
  }
  function input(name, type, value) {
    const el = document.createElement("input");
    el.type = type || "text";
    el.dataset.key = name;
    if (value !== undefined) el.value = value;
    return el;
  }
  function select(name, options) {
    const el = document.createElement("select");
    el.dataset.key = name;
    for (const [value, text] of options) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = text;
      el.appendChild(option);
    }
    return el;
  }
  function button(text, onClick) {
    const el = document.createElement("button");
    el.type = "button";
    el.textContent = text;
    el.addEventListener("click", onClick);
    return el;
  }

  function addRow(group, kind, values) {
    const row = document.createElement("div");
    row.className = "rule";
    row.dataset.kind = kind;
    if (kind === "event") {
      row.append(
        ...labelled("Did", select("negate", [["", "did"], ["not", "did not do"]])),
        ...labelled("Event", input("event")),
        ...labelled("Count", select("op", [["gte", "at least"], ["eq", "exactly"], ["lte", "at most"]])),
        ...labelled("Times", input("count", "number", "1")),
        ...labelled("Window", select("window", [
          ["all_time", "all time"], ["last_days", "in the last N days"],
          ["last_hours", "in the last N hours"], ["since", "since a date"],
        ])),
        ...labelled("N, or date as YYYY-MM-DD", input("window_value")),
      );
    } else {
      row.append(
        ...labelled("Profile property", input("property")),
        ...labelled("Operator", select("op", [["eq", "equals"], ["neq", "does not equal"], ["contains", "contains"], ["set", "is set"], ["not_set", "is not set"]])),
        ...labelled("Value", input("value")),
      );
    }
    row.append(button("Remove row", () => { row.remove(); changed(); }));
    for (const [key, text] of Object.entries(values || {})) {
      row.querySelector(`[data-key="${key}"]`).value = text;
    }
    group.querySelector(".rows").appendChild(row);
    if (!values) changed();
  }

  function addGroup() {
    const group = document.createElement("fieldset");
    group.className = "group";
    const legend = document.createElement("legend");
    legend.textContent = "Group";
    const rows = document.createElement("div");
    rows.className = "rows";
    group.append(
      legend,
      ...labelled("Rows must match", select("combinator", [["all", "all (AND)"], ["any", "any (OR)"]])),
      rows,
      button("+ Behaviour", () => addRow(group, "event")),
      button("+ Profile", () => addRow(group, "profile")),
      button("Remove group", () => { group.remove(); changed(); }),
    );
    groups.appendChild(group);
    return group;
  }

  function value(row, key) {
    const el = row.querySelector(`[data-key="${key}"]`);
    return el ? el.value.trim() : "";
  }
  function literal(text) {
    if (text === "true") return true;
    if (text === "false") return false;
    if (text !== "" && !isNaN(Number(text))) return Number(text);
    return text;
  }
  function rowCondition(row) {
    if (row.dataset.kind === "event") {
      const condition = { event: value(row, "event") };
      const count = {};
      count[value(row, "op")] = Number(value(row, "count") || "1");
      condition.count = count;
      const windowKind = value(row, "window");
      const windowValue = value(row, "window_value");
      if (windowKind === "since" && windowValue) condition.within = { since: windowValue };
      else if (windowKind !== "all_time" && windowValue) condition.within = { [windowKind]: Number(windowValue) };
      return value(row, "negate") === "not" ? { not: condition } : condition;
    }
    const op = value(row, "op");
    const condition = { profile: value(row, "property"), op: op };
    if (op !== "set" && op !== "not_set") condition.value = literal(value(row, "value"));
    return condition;
  }
  function definition() {
    const parts = [];
    for (const group of groups.querySelectorAll(".group")) {
      const rows = [...group.querySelectorAll(".rule")].map(rowCondition);
      if (rows.length === 0) continue;
      const combinator = group.querySelector('[data-key="combinator"]').value;
      parts.push(rows.length === 1 ? rows[0] : { [combinator]: rows });
    }
    if (parts.length === 0) return null;
    return parts.length === 1 ? parts[0] : { [top.value]: parts };
  }

  let timer;
  function changed() {
    const built = definition();
    if (built) field.value = JSON.stringify(built);
    clearTimeout(timer);
    timer = setTimeout(count, 300);
  }
  async function count() {
    let parsed;
    try { parsed = JSON.parse(field.value); } catch (_) { return; }
    const response = await fetch("/ui/cohorts/count", {
      method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify({ definition: parsed }),
    });
    const body = await response.json();
    document.getElementById("live-count").textContent = response.ok ? body.count : body.error;
    document.getElementById("live-exportable").textContent = response.ok ? body.exportable : "—";
  }

  // Reads a stored definition back into groups and rows. Returns false, and leaves the builder
  // empty, when the definition uses a form the builder does not offer.
  const COUNT_OPS = ["gte", "eq", "lte"];
  const PROFILE_OPS = ["eq", "neq", "contains", "set", "not_set"];
  const WINDOWS = ["last_days", "last_hours", "since"];
  function rowValues(condition) {
    let negate = "";
    if (condition.not && Object.keys(condition).length === 1) {
      negate = "not";
      condition = condition.not;
    }
    const keys = Object.keys(condition);
    if ("event" in condition && keys.every((k) => ["event", "count", "within"].includes(k))) {
      const values = { negate, event: condition.event, op: "gte", count: "1", window: "all_time", window_value: "" };
      if (condition.count) {
        const [op, n] = Object.entries(condition.count)[0] || [];
        if (!COUNT_OPS.includes(op) || Object.keys(condition.count).length !== 1) return null;
        values.op = op;
        values.count = String(n);
      }
      if (condition.within) {
        const [kind, value] = Object.entries(condition.within)[0] || [];
        if (!WINDOWS.includes(kind) || Object.keys(condition.within).length !== 1) return null;
        values.window = kind;
        values.window_value = String(value);
      }
      return ["event", values];
    }
    if (!negate && "profile" in condition && PROFILE_OPS.includes(condition.op)
      && keys.every((k) => ["profile", "op", "value"].includes(k))) {
      const value = condition.value === undefined ? "" : String(condition.value);
      return ["profile", { property: condition.profile, op: condition.op, value }];
    }
    return null;
  }
  function combinatorOf(node) {
    const keys = Object.keys(node || {});
    if (keys.length === 1 && (keys[0] === "all" || keys[0] === "any") && Array.isArray(node[keys[0]])) return keys[0];
    return null;
  }
  function load(definition) {
    let topCombinator = combinatorOf(definition);
    let parts = topCombinator ? definition[topCombinator] : [definition];
    // A combinator over rows alone is one group, as the builder writes a single group.
    if (topCombinator && parts.every((part) => !combinatorOf(part))) {
      parts = [definition];
      topCombinator = null;
    }
    const plan = [];
    for (const part of parts) {
      const inner = combinatorOf(part);
      const rows = (inner ? part[inner] : [part]).map(rowValues);
      if (rows.some((row) => row === null)) return false;
      plan.push([inner || "all", rows]);
    }
    top.value = topCombinator || "all";
    for (const [combinator, rows] of plan) {
      const group = addGroup();
      group.querySelector('[data-key="combinator"]').value = combinator;
      for (const [kind, values] of rows) addRow(group, kind, values);
    }
    return true;
  }
  if (field.value.trim()) {
    let stored = null;
    try { stored = JSON.parse(field.value); } catch (_) { /* the JSON field shows the text */ }
    if (stored && !load(stored)) {
      const note = document.createElement("p");
      note.id = "builder-note";
      note.textContent = "This definition uses forms the builder does not show. Edit the JSON below.";
      root.replaceChildren(note);
    }
  }

  root.addEventListener("input", changed);
  root.addEventListener("change", changed);
  top.addEventListener("change", changed);
  field.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(count, 300); });
  document.getElementById("add-group").addEventListener("click", () => {
    const group = addGroup();
    addRow(group, "event");
  });
  if (field.value.trim()) count();
})();
