"""Fixtures for the end-to-end tests.

Each test gets its own `braze-emulator` and `cohortbridge serve` subprocesses, both bound to
port 0 on 127.0.0.1, plus helpers that run CLI commands and read the emulator's `/_emulator/`
inspection endpoints. The binaries come from `COHORTBRIDGE_BIN_DIR`, by default the debug
build of this workspace.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

PARTNER_NAME = "cohortbridge"
PARTNER_API_KEY = "pk-e2e"
DATA_IMPORT_KEY = "dik-e2e"

STARTUP_TIMEOUT_SECS = 20
STOP_TIMEOUT_SECS = 5
CLI_TIMEOUT_SECS = 60
HTTP_TIMEOUT_SECS = 10

LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"
LISTENING_LINE = re.compile(r"^listening on (http://\S+)$")


def _loopback_no_proxy(current: str | None) -> str:
    """Return a NO_PROXY value that also exempts loopback, so no request leaves the machine."""
    return f"{current},{LOOPBACK_HOSTS}" if current else LOOPBACK_HOSTS


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """Build a subprocess environment without inherited cohortbridge or emulator settings.

    Settings such as COHORTBRIDGE_PROJECT or COHORTBRIDGE_SECRET_KEY in the caller's shell would
    otherwise change what the binaries do.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COHORTBRIDGE_", "BRAZE_EMULATOR_"))
    }
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = _loopback_no_proxy(os.environ.get(name))
    # Plain log lines read better in pytest's failure report than ANSI colour codes.
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session", autouse=True)
def loopback_bypasses_proxy() -> Iterator[None]:
    """Exempt loopback from any proxy for in-process clients (the Mixpanel library uses requests)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("NO_PROXY", "no_proxy"):
            patch.setenv(name, _loopback_no_proxy(os.environ.get(name)))
        yield


@pytest.fixture(scope="session")
def binary_dir() -> Path:
    """Folder with the `cohortbridge` and `braze-emulator` binaries."""
    folder = Path(os.environ.get("COHORTBRIDGE_BIN_DIR", REPO_ROOT / "target" / "debug"))
    missing = [
        name
        for name in ("cohortbridge", "braze-emulator")
        if not os.access(folder / name, os.X_OK)
    ]
    if missing:
        pytest.fail(
            f"binaries {', '.join(missing)} not found in {folder}: run cargo build first, "
            "or set COHORTBRIDGE_BIN_DIR to the folder that contains them",
            pytrace=False,
        )
    return folder


class ServiceProcess:
    """A server subprocess whose stdout is read on a thread and whose stderr goes to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        # Draining stdout until EOF keeps a chatty server from blocking on a full pipe.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_url(self, timeout_secs: float = STARTUP_TIMEOUT_SECS) -> str:
        """Wait for the `listening on http://ADDR` line and return the URL it names."""
        deadline = time.monotonic() + timeout_secs
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                pytest.fail(
                    f"{self.name} timed out: no `listening on` line on stdout after "
                    f"{timeout_secs} s. stderr:\n{self.stderr_text()}",
                    pytrace=False,
                )
            if line is None:
                code = self.process.wait()
                pytest.fail(
                    f"{self.name} exited with code {code} before listening. "
                    f"stderr:\n{self.stderr_text()}",
                    pytrace=False,
                )
            match = LISTENING_LINE.match(line.strip())
            if match:
                return match.group(1)

    def stop(self) -> None:
        """Terminate the process, killing it if it has not exited after STOP_TIMEOUT_SECS.

        The stderr log is printed so that pytest shows it in the report of a failed test.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        print(f"--- {self.name} stderr ---\n{self.stderr_text()}")


class BrazeEmulator:
    """Reads the state of a running `braze-emulator` through its `/_emulator/` endpoints."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        # An opener without proxy handling, so inspection requests stay on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> Any:
        url = f"{self.base_url}{path}"
        with self._opener.open(url, timeout=HTTP_TIMEOUT_SECS) as response:
            return json.load(response)

    def cohorts(self) -> list[dict[str, Any]]:
        return self.get("/_emulator/cohorts")

    def cohort(self, cohort_id: str) -> dict[str, Any] | None:
        """Return the summary of one cohort in any workspace, or None if it does not exist."""
        matches = [c for c in self.cohorts() if c["cohort_id"] == cohort_id]
        return matches[0] if matches else None

    def members(self, cohort_id: str) -> list[str]:
        """Return the external ids in a cohort of workspace 0, sorted byte-wise."""
        return self.get(f"/_emulator/cohorts/{urllib.parse.quote(cohort_id)}/members")

    def requests(self) -> list[dict[str, Any]]:
        return self.get("/_emulator/requests")


class CohortBridge:
    """A running `cohortbridge serve` and a runner for CLI commands against it."""

    def __init__(self, executable: Path, base_url: str, admin_key: str):
        self.executable = executable
        self.base_url = base_url
        self._env = _child_env({"COHORTBRIDGE_ADMIN_KEY": admin_key})

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `cohortbridge --server URL ARGS...` and return the result, whatever its exit code."""
        return subprocess.run(
            [str(self.executable), "--server", self.base_url, *args],
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECS,
        )

    def check_output(self, *args: str) -> str:
        """Run a CLI command, assert that it exits with 0 and return its stdout."""
        result = self.run(*args)
        assert result.returncode == 0, (
            f"`cohortbridge {' '.join(args)}` exited with {result.returncode}; "
            f"stderr:\n{result.stderr}"
        )
        return result.stdout

    def json(self, *args: str) -> Any:
        """Run a CLI command with `--json`, assert that it succeeds and parse its stdout."""
        stdout = self.check_output(*args, "--json")
        try:
            return json.loads(stdout)
        except json.JSONDecodeError as error:
            pytest.fail(
                f"`cohortbridge {' '.join(args)} --json` printed invalid JSON ({error}):\n{stdout}"
            )


@pytest.fixture
def braze_emulator(binary_dir: Path, tmp_path: Path) -> Iterator[BrazeEmulator]:
    """A `braze-emulator` on a free loopback port, with one workspace (`dik-e2e`)."""
    service = ServiceProcess(
        "braze-emulator",
        [
            str(binary_dir / "braze-emulator"),
            "--listen",
            "127.0.0.1:0",
            "--partner-name",
            PARTNER_NAME,
            "--partner-api-key",
            PARTNER_API_KEY,
            "--data-import-key",
            DATA_IMPORT_KEY,
        ],
        _child_env({}),
        tmp_path / "braze-emulator.stderr.log",
    )
    try:
        yield BrazeEmulator(service.wait_for_url())
    finally:
        service.stop()


@pytest.fixture
def admin_key() -> str:
    """A random 32-character admin key for this test's server."""
    return secrets.token_hex(16)


def _psql(url: str, sql: str) -> None:
    subprocess.run(
        ["psql", url, "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture
def database_env() -> Iterator[dict[str, str]]:
    """The environment that points a server at its database.

    Without COHORTBRIDGE_TEST_DATABASE_URL the server uses the SQLite file in its data folder.
    With it, the server gets a PostgreSQL schema of its own in that database, as in the Rust
    tests, and the schema is dropped after the test. `psql` creates and drops it.
    """
    base = os.environ.get("COHORTBRIDGE_TEST_DATABASE_URL")
    if not base:
        yield {}
        return
    schema = f"e2e_{secrets.token_hex(6)}"
    _psql(base, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    try:
        yield {
            "COHORTBRIDGE_DATABASE_URL": f"{base}{separator}options=-c%20search_path%3D{schema}"
        }
    finally:
        _psql(base, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def cohortbridge(
    binary_dir: Path, tmp_path: Path, admin_key: str, database_env: dict[str, str]
) -> Iterator[CohortBridge]:
    """A `cohortbridge serve` on a free loopback port with a fresh data folder.

    It accepts custom Braze base URLs, such as the emulator's, and dynamic syncs as short as 1 s.
    """
    executable = binary_dir / "cohortbridge"
    service = ServiceProcess(
        "cohortbridge serve",
        [
            str(executable),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--braze-partner-api-key",
            PARTNER_API_KEY,
            "--allow-custom-braze-url",
            "--min-sync-interval-secs",
            "1",
        ],
        _child_env(
            {"COHORTBRIDGE_ADMIN_KEY": admin_key, "COHORTBRIDGE_INSTALLATION_ID": "e2e", **database_env}
        ),
        tmp_path / "cohortbridge.stderr.log",
    )
    try:
        yield CohortBridge(executable, service.wait_for_url(), admin_key)
    finally:
        service.stop()
