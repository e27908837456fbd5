// End-to-end tests of the web UI in headless Chromium, driven by playwright-core, and of the
// mixpanel-browser library running in that browser against cohortbridge.
//
// The test starts the real cohortbridge and braze-emulator binaries on port 0 on loopback, and
// a small page server for mixpanel-browser. The browser may load only loopback URLs: every
// other request is aborted and fails the test. Binaries come from COHORTBRIDGE_BIN_DIR, by
// default the debug build of this workspace. The browser comes from CHROMIUM_PATH, by default
// the `chromium` found on PATH (Debian's `chromium` package).

"use strict";

delete process.env.HTTPS_PROXY;
delete process.env.HTTP_PROXY;
delete process.env.https_proxy;
delete process.env.http_proxy;

const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { test, before, after } = require("node:test");

const { chromium } = require("playwright-core");

const REPO_ROOT = path.resolve(__dirname, "..", "..", "..");
const BIN_DIR = process.env.COHORTBRIDGE_BIN_DIR || path.join(REPO_ROOT, "target", "debug");
const CHROMIUM =
  process.env.CHROMIUM_PATH ||
  execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
// When set, screenshots of the main pages are written to this folder.
const SCREENSHOT_DIR = process.env.COHORTBRIDGE_SCREENSHOTS;
const ADMIN_KEY = "browser-e2e-admin-key-0123456789";
const PARTNER_KEY = "browser-e2e-partner-key";
const IMPORT_KEY = "browser-e2e-data-import-key";
const PASSWORD = "browser test password 1";
const STARTUP_TIMEOUT_MS = 20_000;

const { testDatabase } = require("../../support/database");

let workDir;
let database;
let server;
let emulator;
let base;
let emulatorBase;
let token;
let browser;
const children = [];
const externalRequests = [];

/** Starts a binary that prints `listening on http://ADDR` and resolves with that URL. */
function startBinary(name, args, env) {
  const child = spawn(path.join(BIN_DIR, name), args, {
    env: { PATH: process.env.PATH, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not print its address`)), STARTUP_TIMEOUT_MS);
    child.on("exit", (code) => reject(new Error(`${name} exited with code ${code}`)));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      const match = /^listening on (http:\/\/\S+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
}

async function admin(method, pathName, body) {
  const response = await fetch(`${base}/api/v1${pathName}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${pathName}: HTTP ${response.status}: ${text}`);
  return JSON.parse(text);
}

/** Sends events and profile updates the way an SDK would. */
async function seed() {
  const now = Math.floor(Date.now() / 1000);
  const events = [
    ["alice", "Purchase", now - 60], ["alice", "Purchase", now - 120],
    ["bob", "Purchase", now - 30], ["carol", "Purchase", now - 30], ["dave", "Login", now - 30],
  ].map(([id, event, time], i) => ({
    event, properties: { token, distinct_id: id, time, $insert_id: `seed-${i}` },
  }));
  const profiles = [
    ["alice", "pro"], ["bob", "pro"], ["carol", "free"], ["dave", "pro"],
  ].map(([id, plan]) => ({
    $token: token, $distinct_id: id, $set: { plan, $braze_external_id: `ext-${id}` },
  }));
  for (const [route, records] of [["track", events], ["engage", profiles]]) {
    const response = await fetch(`${base}/${route}?verbose=1`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ data: JSON.stringify(records) }),
    });
    assert.equal(response.status, 200, await response.text());
  }
}

async function newPage() {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  // Only loopback may be reached; anything else is recorded and aborted.
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === "127.0.0.1" || url.hostname === "[::1]") return route.continue();
    externalRequests.push(url.href);
    return route.abort();
  });
  return context.newPage();
}

async function login(page, email) {
  await page.goto(`${base}/ui/login`);
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await Promise.all([page.waitForURL(/\/ui\/cohorts$/), page.getByRole("button", { name: "Log in" }).click()]);
}

async function screenshot(page, name) {
  if (!SCREENSHOT_DIR) return;
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`), fullPage: true });
}

before(async () => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), "cohortbridge-browser-"));
  database = testDatabase();
  emulatorBase = await startBinary("braze-emulator", [
    "--listen", "127.0.0.1:0", "--partner-name", "cohortbridge",
    "--partner-api-key", PARTNER_KEY, "--data-import-key", IMPORT_KEY,
  ]);
  base = await startBinary("cohortbridge", [
    "serve", "--listen", "127.0.0.1:0", "--data-dir", path.join(workDir, "data"),
    "--braze-partner-api-key", PARTNER_KEY, "--allow-custom-braze-url",
    "--owner-email", "owner@example.com",
  ], {
    COHORTBRIDGE_ADMIN_KEY: ADMIN_KEY,
    COHORTBRIDGE_OWNER_PASSWORD: PASSWORD,
    COHORTBRIDGE_INSTALLATION_ID: "e2e",
    ...database.env,
  });
  token = (await admin("GET", "/projects/1")).token;
  // People are added with the CLI, as an operator would.
  for (const role of ["admin", "analyst", "consumer"]) {
    execFileSync(path.join(BIN_DIR, "cohortbridge"), [
      "users", "create", "--email", `${role}@example.com`, "--role", role, "--server", base,
    ], { env: { PATH: process.env.PATH, COHORTBRIDGE_ADMIN_KEY: ADMIN_KEY, COHORTBRIDGE_USER_PASSWORD: PASSWORD } });
  }
  await seed();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  if (browser) await browser.close();
  const running = children.filter((child) => child.exitCode === null);
  const exited = running.map((child) => new Promise((resolve) => child.once("exit", resolve)));
  for (const child of running) child.kill("SIGTERM");
  await Promise.all(exited);
  database?.drop();
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
});

let cohortId;
let syncId;

test("admin connects Braze, builds a cohort and exports it", async () => {
  const page = await newPage();
  await login(page, "admin@example.com");

  await page.getByRole("link", { name: "Integrations" }).click();
  await page.waitForURL(/\/ui\/integrations\/braze$/);
  const connect = async (name, key) => {
    await page.getByLabel("Connection name").fill(name);
    await page.getByLabel("Braze instance").selectOption("custom");
    await page.getByLabel(/Custom base URL/).fill(emulatorBase);
    await page.getByLabel("Data Import Key", { exact: true }).fill(key);
    await page.getByRole("button", { name: "Connect", exact: true }).click();
    await page.waitForLoadState();
  };
  await connect("first", "wrong-import-key");
  const error = page.locator("#data_import_key-error");
  await assert.doesNotReject(error.waitFor());
  assert.match(await error.textContent(), /Braze rejected the credentials.*Invalid client secret/);
  assert.equal(await page.getByLabel("Data Import Key", { exact: true }).inputValue(), "", "the key is not rendered back");
  assert.ok(!(await page.content()).includes("wrong-import-key"));
  await connect("first", IMPORT_KEY);
  assert.match(await page.locator('[data-connection="first"] .status').textContent(), /Connected/);
  // A second connection through the menu's "+ Add Connection".
  await page.locator('[data-connection="first"] summary').click();
  await page.locator('[data-connection="first"]').getByRole("link", { name: "+ Add Connection" }).click();
  await connect("second", IMPORT_KEY);
  assert.match(await page.locator('[data-connection="second"] .status').textContent(), /Connected/);
  // Reconnecting with a wrong key shows Braze's reason at that connection.
  await page.locator('[data-connection="first"] summary').click();
  await page.locator('[data-connection="first"]').getByLabel("New Data Import Key").fill("wrong-again");
  await page.locator('[data-connection="first"]').getByRole("button", { name: "Reconnect" }).click();
  await page.waitForLoadState();
  assert.match(await page.locator('[data-connection="first"] .field-error').textContent(), /Invalid client secret/);
  assert.match(await page.locator('[data-connection="first"] .status').textContent(), /Connected/);
  await screenshot(page, "integrations");

  await page.getByRole("link", { name: "Cohorts" }).click();
  await page.getByRole("link", { name: "+ New cohort" }).click();
  await page.getByLabel("Name").fill("Pro buyers");
  await page.locator("#add-group").click();
  const group = page.locator("#groups .group").first();
  await group.locator('[data-key="event"]').fill("Purchase");
  await group.locator('[data-key="window"]').selectOption("last_days");
  await group.locator('[data-key="window_value"]').fill("30");
  await group.getByRole("button", { name: "+ Profile" }).click();
  await group.locator('[data-key="property"]').fill("plan");
  await group.locator('.rule[data-kind="profile"] [data-key="value"]').fill("pro");
  await page.waitForFunction(() => document.getElementById("live-count").textContent === "2");
  assert.equal(await page.locator("#live-exportable").textContent(), "2");
  const definition = JSON.parse(await page.locator("#definition").inputValue());
  assert.deepEqual(definition, {
    all: [
      { event: "Purchase", count: { gte: 1 }, within: { last_days: 30 } },
      { profile: "plan", op: "eq", value: "pro" },
    ],
  });
  await screenshot(page, "cohort-builder");
  await Promise.all([page.waitForURL(/\/ui\/cohorts\/\d+$/), page.locator("#save-cohort").click()]);
  cohortId = Number(page.url().split("/").pop());
  assert.equal(await page.locator("#member-count").textContent(), "2");
  // The edit form reads the saved definition back into the builder's rows.
  const saved = page.locator("#groups .group").first();
  assert.equal(await saved.locator('[data-key="event"]').inputValue(), "Purchase");
  assert.equal(await saved.locator('[data-key="window"]').inputValue(), "last_days");
  assert.equal(await saved.locator('[data-key="window_value"]').inputValue(), "30");
  assert.equal(await saved.locator('[data-key="property"]').inputValue(), "plan");
  assert.equal(await saved.locator('.rule[data-kind="profile"] [data-key="value"]').inputValue(), "pro");
  await page.waitForFunction(() => document.getElementById("live-count").textContent === "2");

  await page.getByRole("link", { name: "Export to Braze (second)" }).click();
  assert.equal(await page.locator("#preview-adds").textContent(), "2");
  assert.equal(await page.locator("#preview-removes").textContent(), "0");
  await screenshot(page, "export-preview");
  await page.getByRole("radio", { name: "Dynamic sync" }).check();
  await Promise.all([page.waitForURL(/\/ui\/syncs\/\d+$/), page.locator("#begin-sync").click()]);
  syncId = Number(page.url().split("/").pop());
  assert.equal(await page.locator("#sync-status").textContent(), "Active");
  assert.equal(await page.locator("#runs tbody tr td.added").first().textContent(), "2");
  const members = await (await fetch(`${emulatorBase}/_emulator/cohorts/cohortbridge-e2e-1-${cohortId}/members`)).json();
  assert.deepEqual([...members].sort(), ["ext-alice", "ext-bob"]);

  const [download] = await Promise.all([page.waitForEvent("download"), page.locator("a.csv").first().click()]);
  const csv = fs.readFileSync(await download.path(), "utf8");
  assert.match(csv, /^distinct_id,external_id,operation,reason/);
  assert.match(csv, /alice,ext-alice,add/);
  assert.match(csv, /bob,ext-bob,add/);
  await screenshot(page, "sync");

  await page.locator("#pause").click();
  await page.waitForLoadState();
  assert.equal(await page.locator("#sync-status").textContent(), "Paused");
  assert.match(await page.locator("#sync-reason").textContent(), /paused by the operator/);
  await page.locator("#resume").click();
  await page.waitForLoadState();
  assert.equal(await page.locator("#sync-status").textContent(), "Active");
  await page.goto(`${base}/ui/syncs`);
  assert.match(await page.locator(`tr[data-sync="${syncId}"] .status`).textContent(), /Active/);
  await page.context().close();
});

test("users page explains membership and what Braze has", async () => {
  const page = await newPage();
  await login(page, "analyst@example.com");
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByLabel("Distinct id or Braze id").fill("ext-alice");
  await page.getByRole("button", { name: "Find" }).click();
  await page.waitForLoadState();
  assert.equal(await page.locator("h1").textContent(), "User alice");
  const membership = page.locator(`#memberships [data-cohort="${cohortId}"]`);
  assert.equal(await membership.locator(".member").textContent(), "member");
  assert.match(await membership.textContent(), /sent to Braze as ext-alice/);
  // The first run added her; a later scheduled run finds her in Braze already.
  assert.match(await membership.locator(".last-run").textContent(), /^run #\d+: (add|no-op)$/);
  await membership.locator("summary").click();
  assert.match(await membership.textContent(), /Purchase/);
  await screenshot(page, "user");

  await page.goto(`${base}/ui/users?q=carol`);
  const carol = page.locator(`#memberships [data-cohort="${cohortId}"]`);
  assert.equal(await carol.locator(".member").textContent(), "not a member");
  assert.match(await carol.locator(".last-run").textContent(), /^run #\d+: not part of it$/);
  await page.context().close();
});

test("MTU and setup pages render", async () => {
  const page = await newPage();
  await login(page, "owner@example.com");
  await page.getByRole("link", { name: "MTU" }).click();
  const month = new Date().toISOString().slice(0, 7);
  const bar = page.locator(`#mtu-chart rect.counted[data-month="${month}"]`);
  assert.ok(Number(await bar.getAttribute("data-users")) >= 4);
  assert.match(await page.locator("#mtu-figure").textContent(), new RegExp(`in ${month}`));
  await screenshot(page, "mtu");
  await page.getByRole("link", { name: "Setup" }).click();
  assert.equal(await page.locator("#project-token").textContent(), token);
  assert.match(await page.content(), new RegExp(`api_host: &quot;${base.replace(/[.]/g, "\\.")}&quot;|api_host: "${base.replace(/[.]/g, "\\.")}"`));
  await screenshot(page, "setup");
  await page.context().close();
});

test("analyst cannot open connection settings", async () => {
  const page = await newPage();
  // Log in with the keyboard only.
  await page.goto(`${base}/ui/login`);
  await page.getByLabel("E-mail").focus();
  await page.keyboard.type("analyst@example.com");
  await page.keyboard.press("Tab");
  await page.keyboard.type(PASSWORD);
  await Promise.all([page.waitForURL(/\/ui\/cohorts$/), page.keyboard.press("Enter")]);
  assert.equal(await page.getByRole("link", { name: "Integrations" }).count(), 0);
  const response = await page.goto(`${base}/ui/integrations/braze`);
  assert.equal(response.status(), 403);
  assert.match(await page.locator(".error").textContent(), /Your role \(analyst\) may not manage Braze connections/);
  await page.context().close();
});

test("consumer cannot export", async () => {
  const page = await newPage();
  await login(page, "consumer@example.com");
  await page.goto(`${base}/ui/cohorts/${cohortId}`);
  assert.equal(await page.getByRole("link", { name: /Export to Braze/ }).count(), 0);
  const response = await page.goto(`${base}/ui/cohorts/${cohortId}/export?connection=second`);
  assert.equal(response.status(), 403);
  assert.match(await page.locator(".error").textContent(), /Your role \(consumer\) may not export/);
  await page.goto(`${base}/ui/syncs/${syncId}`);
  assert.equal(await page.locator("#pause").count(), 0);
  await page.context().close();
});

test("mixpanel-browser in Chromium sends to cohortbridge", async () => {
  const library = fs.readFileSync(require.resolve("mixpanel-browser/dist/mixpanel.umd.js"));
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>SDK test</title></head><body>
<script src="/mixpanel.js"></script>
<script>
  window.sent = [];
  const done = (name) => (status) => window.sent.push([name, status]);
  mixpanel.init(${JSON.stringify(token)}, { api_host: ${JSON.stringify(base)}, batch_requests: false, ignore_dnt: true });
  mixpanel.track("Page Viewed", { page: "sdk-test" }, done("Page Viewed"));
  mixpanel.identify("mp-user-1");
  mixpanel.people.set({ $braze_external_id: "ext-mp-1", plan: "pro" }, done("people.set"));
  mixpanel.track("Purchase", { amount: 5 }, done("Purchase"));
</script></body></html>`;
  const pageServer = http.createServer((request, response) => {
    if (request.url === "/mixpanel.js") {
      response.writeHead(200, { "content-type": "text/javascript" });
      return response.end(library);
    }
    response.writeHead(200, { "content-type": "text/html" });
    response.end(html);
  });
  await new Promise((resolve) => pageServer.listen(0, "127.0.0.1", resolve));
  const pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;
  try {
    const page = await newPage();
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.sent.length === 3, null, { timeout: 15_000 });
    const sent = await page.evaluate(() => window.sent);
    for (const [name, status] of sent) assert.equal(status, 1, `${name} was acknowledged`);
    await page.context().close();
  } finally {
    pageServer.close();
  }

  const events = await admin("GET", "/projects/1/events?distinct_id=mp-user-1");
  const names = events.map((e) => e.event);
  // "Page Viewed" was sent before identify(), under the anonymous $device: id.
  assert.ok(names.includes("$identify"), names.join());
  assert.ok(names.includes("Purchase"), names.join());
  assert.ok(!names.includes("Page Viewed"), names.join());
  const profile = await admin("GET", "/projects/1/profiles/mp-user-1");
  assert.equal(profile.properties.$braze_external_id, "ext-mp-1");

  const page = await newPage();
  await login(page, "consumer@example.com");
  await page.goto(`${base}/ui/users?q=ext-mp-1`);
  assert.equal(await page.locator("h1").textContent(), "User mp-user-1");
  const table = await page.locator("#events").textContent();
  assert.match(table, /Page Viewed/, "the anonymous event is shown through the identity cluster");
  assert.match(table, /Purchase/);
  assert.ok((await page.locator("#cluster li").count()) >= 2, "the anonymous device id is in the cluster");
  await page.context().close();
});

test("builder leaves unsupported forms to the JSON field", async () => {
  const definition = { event: "Purchase", sum: { property: "amount", gte: 10 } };
  const cohort = await admin("POST", "/projects/1/cohorts", { name: "Big spenders", definition });
  const page = await newPage();
  await login(page, "analyst@example.com");
  await page.goto(`${base}/ui/cohorts/${cohort.id}`);
  assert.match(await page.locator("#builder-note").textContent(), /forms the builder does not show/);
  assert.deepEqual(JSON.parse(await page.locator("#definition").inputValue()), definition);
  await page.context().close();
});

test("pages fit a phone screen", async () => {
  const page = await newPage();
  await page.setViewportSize({ width: 390, height: 800 });
  await login(page, "owner@example.com");
  for (const pathName of ["/ui/cohorts", `/ui/cohorts/${cohortId}`, "/ui/integrations/braze", `/ui/syncs/${syncId}`, "/ui/mtu", "/ui/users?q=alice"]) {
    await page.goto(`${base}${pathName}`);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `${pathName} is ${width} px wide`);
  }
  await page.context().close();
});

test("the browser loaded nothing outside loopback", () => {
  assert.deepEqual(externalRequests, []);
});
