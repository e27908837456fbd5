// The database of a `cohortbridge serve` that a Node test spawns. Without
// COHORTBRIDGE_TEST_DATABASE_URL the server uses the SQLite file in its data folder. With it,
// the server gets a PostgreSQL schema of its own in that database, as in the Rust tests, and
// `drop()` removes the schema. `psql` creates and drops it.
"use strict";

const { execFileSync } = require("node:child_process");
const crypto = require("node:crypto");

function psql(url, sql) {
  execFileSync("psql", [url, "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", sql], {
    stdio: ["ignore", "ignore", "inherit"],
  });
}

/** Returns the environment that points a server at its database, and a `drop` function. */
function testDatabase() {
  const base = process.env.COHORTBRIDGE_TEST_DATABASE_URL;
  if (!base) {
    return { env: {}, drop() {} };
  }
  const schema = `e2e_${crypto.randomBytes(6).toString("hex")}`;
  psql(base, `CREATE SCHEMA ${schema}`);
  const separator = base.includes("?") ? "&" : "?";
  return {
    env: {
      COHORTBRIDGE_DATABASE_URL: `${base}${separator}options=-c%20search_path%3D${schema}`,
    },
    drop() {
      psql(base, `DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

module.exports = { testDatabase };
