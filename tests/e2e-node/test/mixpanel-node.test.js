// End-to-end test with the official Mixpanel Node library (`mixpanel` on npm) as the client.
//
// The library talks plain HTTP to cohortbridge for /track, /engage and /groups. It sends
// credentials only over HTTPS, so its /import calls go through a TLS-terminating reverse proxy
// that this test starts on 127.0.0.1 and that publishes cohortbridge under the prefix `/mp`.
// Every socket is on loopback. The cohortbridge binary comes from COHORTBRIDGE_BIN_DIR, by
// default the debug build of this workspace.

"use strict";

// The library routes through HTTP(S)_PROXY when set; this test must reach loopback directly.
delete process.env.HTTPS_PROXY;
delete process.env.HTTP_PROXY;
delete process.env.https_proxy;
delete process.env.http_proxy;

const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const https = require("node:https");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { test, before, after } = require("node:test");

const Mixpanel = require("mixpanel");

const { testDatabase } = require("../../support/database");

const ADMIN_KEY = "node-e2e-admin-key-0123456789";
const REPO_ROOT = path.resolve(__dirname, "..", "..", "..");
const BIN_DIR =
  process.env.COHORTBRIDGE_BIN_DIR || path.join(REPO_ROOT, "target", "debug");
const STARTUP_TIMEOUT_MS = 20_000;

let server;
let base;
let project;
let proxy;
let proxyPort;
let workDir;
let database;

/** Starts `cohortbridge serve` on port 0 and resolves with its base URL. */
function startServer(dataDir) {
  const child = spawn(
    path.join(BIN_DIR, "cohortbridge"),
    ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir],
    {
      env: { PATH: process.env.PATH, COHORTBRIDGE_ADMIN_KEY: ADMIN_KEY, ...database.env },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const url = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error("cohortbridge did not print its address")),
      STARTUP_TIMEOUT_MS,
    );
    child.on("exit", (code) =>
      reject(new Error(`cohortbridge exited with code ${code}`)),
    );
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      const match = /^listening on (http:\/\/\S+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  return { child, url };
}

/** Starts an HTTPS server with a self-signed certificate that forwards every request to `target`. */
async function startTlsProxy(target, dir) {
  const key = path.join(dir, "key.pem");
  const cert = path.join(dir, "cert.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  const upstream = new URL(target);
  const tls = https.createServer(
    { key: fs.readFileSync(key), cert: fs.readFileSync(cert) },
    (request, response) => {
      const forwarded = http.request(
        {
          host: upstream.hostname,
          port: upstream.port,
          method: request.method,
          path: request.url,
          headers: request.headers,
        },
        (reply) => {
          response.writeHead(reply.statusCode, reply.headers);
          reply.pipe(response);
        },
      );
      forwarded.on("error", (error) => {
        response.writeHead(502);
        response.end(String(error));
      });
      request.pipe(forwarded);
    },
  );
  await new Promise((resolve) => tls.listen(0, "127.0.0.1", resolve));
  return tls;
}

async function admin(pathname) {
  const response = await fetch(`${base}/api/v1/projects/1${pathname}`, {
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
  });
  return { status: response.status, body: await response.json() };
}

async function eventsOf(distinctId) {
  const query = new URLSearchParams({ distinct_id: distinctId });
  const { status, body } = await admin(`/events?${query}`);
  assert.equal(status, 200);
  return body;
}

/** Runs a library call, given as a function of its callback, as a promise. */
function call(send) {
  return new Promise((resolve, reject) =>
    send((error) => (error ? reject(error) : resolve())),
  );
}

function httpClient(extra = {}) {
  const port = new URL(base).port;
  return Mixpanel.init(project.token, {
    protocol: "http",
    host: "127.0.0.1",
    port,
    keepAlive: false,
    ...extra,
  });
}

function tlsClient(auth) {
  return Mixpanel.init(project.token, {
    protocol: "https",
    host: "127.0.0.1",
    port: proxyPort,
    path: "/mp",
    keepAlive: false,
    ...auth,
  });
}

before(async () => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), "cohortbridge-node-"));
  database = testDatabase();
  server = startServer(path.join(workDir, "data"));
  base = await server.url;
  const projectReply = await admin("");
  assert.equal(projectReply.status, 200);
  project = projectReply.body;
  // The API secret is returned only by the request that generates it.
  const secretReply = await fetch(`${base}/api/v1/projects/1/api-secret`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
  });
  assert.equal(secretReply.status, 200);
  project.api_secret = (await secretReply.json()).api_secret;
  proxy = await startTlsProxy(base, workDir);
  proxyPort = proxy.address().port;
  // The proxy's certificate is self-signed; only this process's requests to it are affected.
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
});

after(async () => {
  proxy?.close();
  if (server && server.child.exitCode === null) {
    const exited = new Promise((resolve) => server.child.once("exit", resolve));
    server.child.kill("SIGTERM");
    await exited;
  }
  database?.drop();
  fs.rmSync(workDir, { recursive: true, force: true });
});

test("track sends one event as GET with base64 data", async () => {
  for (const verbose of [false, true]) {
    const mp = httpClient({ verbose });
    const id = `node-track-${verbose}`;
    // `<<??>>~` makes the base64 payload contain `+` and `/`.
    await call((done) => mp.track("Opened", { distinct_id: id, note: "<<??>>~" }, done));
    const events = await eventsOf(id);
    assert.equal(events.length, 1);
    assert.equal(events[0].event, "Opened");
    assert.equal(events[0].properties.note, "<<??>>~");
    assert.equal(events[0].properties.mp_lib, "node");
  }
});

test("track_batch posts a form with a base64 array", async () => {
  const mp = httpClient({ verbose: true });
  const now = Math.floor(Date.now() / 1000);
  const batch = [];
  for (let i = 0; i < 120; i++) {
    batch.push({
      event: "Batched",
      properties: { distinct_id: "node-batch", time: now, $insert_id: `nb-${i}` },
    });
  }
  // The library splits the list into requests of 50.
  await call((done) => mp.track_batch(batch, done));
  assert.equal((await eventsOf("node-batch")).length, 120);
});

test("people and groups updates reach the profiles", async () => {
  const mp = httpClient();
  await call((done) => mp.people.set("node-user", { plan: "pro", seats: 3 }, done));
  await call((done) => mp.people.set_once("node-user", { plan: "free", first: "yes" }, done));
  await call((done) => mp.people.increment("node-user", "seats", 2, done));
  await call((done) => mp.people.union("node-user", { tags: ["a", "b"] }, done));
  const profile = await admin("/profiles/node-user");
  assert.equal(profile.status, 200);
  assert.equal(profile.body.properties.plan, "pro");
  assert.equal(profile.body.properties.first, "yes");
  assert.equal(profile.body.properties.seats, 5);
  assert.deepEqual(profile.body.properties.tags, ["a", "b"]);

  await call((done) => mp.groups.set("company", "Acme Inc.", { industry: "widgets" }, done));
  await call((done) => mp.groups.union("company", "Acme Inc.", { regions: ["eu"] }, done));
  const group = await admin(`/groups/company/${encodeURIComponent("Acme Inc.")}`);
  assert.equal(group.status, 200);
  assert.equal(group.body.properties.industry, "widgets");
  assert.deepEqual(group.body.properties.regions, ["eu"]);

  await call((done) => mp.groups.delete_group("company", "Acme Inc.", done));
  const deleted = await admin(`/groups/company/${encodeURIComponent("Acme Inc.")}`);
  assert.equal(deleted.status, 404);
});

test("import sends Basic auth through a TLS proxy", async () => {
  const old = Math.floor(Date.now() / 1000) - 30 * 86_400;
  const withSecret = tlsClient({ secret: project.api_secret });
  await call((done) => withSecret.import("Old Purchase", old, {
    distinct_id: "node-import",
    $insert_id: "ni-1",
  }, done));

  const credentials = new Mixpanel.ServiceAccountCredentials(
    "node-service-account",
    project.api_secret,
    String(project.id),
  );
  const withServiceAccount = tlsClient({ credentials });
  const batch = [1, 2, 3].map((i) => ({
    event: "Old Purchase",
    properties: { distinct_id: "node-import", time: old + i, $insert_id: `ni-b${i}` },
  }));
  await call((done) => withServiceAccount.import_batch(batch, done));

  const events = await eventsOf("node-import");
  assert.equal(events.length, 4);
  for (const event of events) {
    assert.equal(event.properties.$import, true);
  }
});

test("import with a wrong secret is rejected", async () => {
  const wrong = tlsClient({ secret: "not-the-secret" });
  await assert.rejects(
    call((done) =>
      wrong.import("Rejected", Math.floor(Date.now() / 1000) - 86_400, {
        distinct_id: "node-rejected",
      }, done),
    ),
  );
  assert.equal((await eventsOf("node-rejected")).length, 0);
});
