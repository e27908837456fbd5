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

  function addRow(group, kind) {
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
    group.querySelector(".rows").appendChild(row);
    changed();
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
      const window = value(row, "window");
      const windowValue = value(row, "window_value");
      if (window === "since" && windowValue) condition.within = { since: windowValue };
      else if (window !== "all_time" && windowValue) condition.within = { [window]: Number(windowValue) };
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
