"""End-to-end loop with the official Mixpanel Python library as the client.

Events and profiles go in through `mixpanel` (PyPI) pointed at cohortbridge's /track, /engage
and /import. The cohortbridge CLI defines a cohort and exports it to the Braze emulator, once
and as a dynamic sync, and the emulator's inspection endpoints show what Braze received.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mixpanel import BufferedConsumer, Consumer, Mixpanel

from conftest import DATA_IMPORT_KEY, PARTNER_NAME, BrazeEmulator, CohortBridge

DAY_SECS = 86_400
MIXPANEL_TIMEOUT_SECS = 10

COHORT_NAME = "Pro repeat purchasers"
COHORT_DEFINITION = {
    "all": [
        {"event": "Purchase", "count": {"gte": 2}, "within": {"last_days": 30}},
        {"profile": "plan", "op": "eq", "value": "pro"},
        {"not": {"event": "Churned"}},
    ]
}
BUFFERED_COHORT_NAME = "Buffered senders"
BUFFERED_COHORT_DEFINITION = {"event": "Buffered Event"}

USERS_PATH = f"/partners/{PARTNER_NAME}/cohorts/users"


def create_cohort(cli: CohortBridge, folder: Path, name: str, definition: dict) -> int:
    """Write a definition file, create the cohort from it and return the cohort id."""
    path = folder / f"{name.lower().replace(' ', '-')}.json"
    path.write_text(json.dumps(definition))
    return cli.json("cohorts", "create", "--name", name, "--file", str(path))["id"]


def cohort_members(cli: CohortBridge, cohort_id: int) -> list[str]:
    return cli.json("cohorts", "members", str(cohort_id))["members"]


def requests_after(emulator: BrazeEmulator, last_seq: int) -> list[dict[str, Any]]:
    """Return the partner requests the emulator received after request number `last_seq`."""
    return [r for r in emulator.requests() if r["seq"] > last_seq]


def last_seq(emulator: BrazeEmulator) -> int:
    return max((r["seq"] for r in emulator.requests()), default=0)


def test_mixpanel_library_to_braze_loop(
    cohortbridge: CohortBridge, braze_emulator: BrazeEmulator, tmp_path: Path
) -> None:
    cli = cohortbridge
    project = cli.json("projects", "show")
    # The API secret is shown only when generated.
    api_secret = cli.json("projects", "rotate-api-secret")["api_secret"]
    base = cli.base_url
    endpoints = {
        "events_url": f"{base}/track",
        "people_url": f"{base}/engage",
        "import_url": f"{base}/import",
    }
    # In mixpanel 4.10.1 every call raises MixpanelException unless the server replies with
    # status 1, so each call below also checks that the server accepted the records.
    mp = Mixpanel(
        project["token"], consumer=Consumer(request_timeout=MIXPANEL_TIMEOUT_SECS, **endpoints)
    )
    now = time.time()
    month = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m")

    # Profiles. erin is a pro member without a Braze external id, so exports skip her.
    mp.people_set("alice", {"plan": "pro", "$braze_external_id": "ext-alice"})
    mp.people_set("bob", {"plan": "pro", "$braze_external_id": "ext-bob"})
    mp.people_set("carol", {"plan": "free"})
    mp.people_set("dave", {"plan": "pro", "$braze_external_id": "ext-dave"})
    mp.people_set("erin", {"plan": "pro"})
    mp.people_set("frank", {"plan": "pro", "$braze_external_id": "ext-frank"})

    # Recent events through /track, all timed now.
    recent_purchases = {"alice": 2, "bob": 1, "carol": 2, "dave": 2, "erin": 2, "frank": 1}
    for user, count in recent_purchases.items():
        for _ in range(count):
            mp.track(user, "Purchase", {"amount": 20})
    mp.track("dave", "Churned")

    # Historical events through /import, which needs the API secret. bob's purchase 10 days
    # ago is inside the 30-day window, frank's 40 days ago is outside it.
    mp.import_data(
        None, "bob", "Purchase", int(now - 10 * DAY_SECS), api_secret=api_secret
    )
    mp.import_data(
        None, "frank", "Purchase", int(now - 40 * DAY_SECS), api_secret=api_secret
    )
    users_tracked_this_month = set(recent_purchases)

    cohort_id = create_cohort(cli, tmp_path, COHORT_NAME, COHORT_DEFINITION)
    members = cohort_members(cli, cohort_id)
    assert members == ["alice", "bob", "erin"], (
        f"cohort members should be alice (2 tracked purchases), bob (1 tracked + 1 imported "
        f"in the window) and erin (no Braze id), got {members}"
    )

    # Connections are checked against Braze first, so a wrong Data Import Key is rejected.
    rejected = cli.run(
        "connections",
        "add",
        "--name",
        "wrong-key",
        "--base-url",
        braze_emulator.base_url,
        "--data-import-key",
        "not-a-workspace-key",
    )
    assert rejected.returncode != 0, "connections add with a wrong Data Import Key succeeded"
    assert rejected.stderr.startswith("error:"), (
        f"a rejected connection should print `error: ...` on stderr, got {rejected.stderr!r}"
    )
    cli.check_output(
        "connections",
        "add",
        "--name",
        "emu",
        "--base-url",
        braze_emulator.base_url,
        "--data-import-key",
        DATA_IMPORT_KEY,
    )

    # A one-time export sends every member that has a Braze external id.
    braze_cohort_id = f"cohortbridge-e2e-{project['id']}-{cohort_id}"
    export = cli.json("export", str(cohort_id), "--connection", "emu", "--once")
    run = export["run"]
    assert run["status"] == "succeeded", f"one-time export failed: {run}"
    assert run["members"] == 3, f"one-time export should count 3 members: {run}"
    assert run["added"] == 2, f"one-time export should add ext-alice and ext-bob: {run}"
    assert run["removed"] == 0, f"one-time export to a new cohort removed ids: {run}"
    assert run["skipped"] == 1, f"one-time export should skip erin, who has no Braze id: {run}"

    braze_cohort = braze_emulator.cohort(braze_cohort_id)
    assert braze_cohort is not None, (
        f"emulator has no cohort {braze_cohort_id}: {braze_emulator.cohorts()}"
    )
    assert braze_cohort["name"] == COHORT_NAME, f"Braze cohort has the wrong name: {braze_cohort}"
    braze_members = braze_emulator.members(braze_cohort_id)
    assert braze_members == ["ext-alice", "ext-bob"], (
        f"Braze members after the one-time export: {braze_members}"
    )

    # A dynamic sync starts from what Braze already acknowledged, so its first run sends nothing.
    seq_before_dynamic = last_seq(braze_emulator)
    dynamic = cli.json("export", str(cohort_id), "--connection", "emu", "--dynamic", "--every", "1m")
    sync_id = str(dynamic["sync"]["id"])
    first = dynamic["run"]
    assert first["status"] == "succeeded", f"first dynamic run failed: {first}"
    assert first["added"] == 0, f"first dynamic run re-added members: {first}"
    assert first["removed"] == 0, f"first dynamic run removed members: {first}"
    sent = requests_after(braze_emulator, seq_before_dynamic)
    assert sent == [], f"first dynamic run sent partner requests: {sent}"

    # alice churns and leaves the cohort. carol upgrades to pro, gets a Braze id and joins.
    mp.track("alice", "Churned")
    mp.people_set("carol", {"plan": "pro", "$braze_external_id": "ext-carol"})
    members = cohort_members(cli, cohort_id)
    assert members == ["bob", "carol", "erin"], f"members after alice left and carol joined: {members}"

    seq_before_second = last_seq(braze_emulator)
    second = cli.json("syncs", "run", sync_id)
    assert second["status"] == "succeeded", f"second dynamic run failed: {second}"
    assert second["added"] == 1, f"second dynamic run should add carol only: {second}"
    assert second["removed"] == 1, f"second dynamic run should remove alice only: {second}"
    assert second["skipped"] == 1, f"second dynamic run should skip erin: {second}"

    sent = requests_after(braze_emulator, seq_before_second)
    assert all(r["applied"] for r in sent), f"emulator did not apply every request: {sent}"
    user_changes = [r for r in sent if r["path"] == USERS_PATH]
    assert {r["cohort_id"] for r in user_changes} == {braze_cohort_id}, (
        f"second dynamic run changed members of other cohorts: {user_changes}"
    )
    ids_added = [i for r in user_changes for i in r["ids_added"]]
    ids_removed = [i for r in user_changes for i in r["ids_removed"]]
    assert ids_added == ["ext-carol"], f"Braze should receive one add, ext-carol: {user_changes}"
    assert ids_removed == ["ext-alice"], f"Braze should receive one remove, ext-alice: {user_changes}"
    braze_members = braze_emulator.members(braze_cohort_id)
    assert braze_members == ["ext-bob", "ext-carol"], (
        f"Braze members after the second dynamic run: {braze_members}"
    )

    # Nothing changed since, so a third run sends nothing.
    seq_before_third = last_seq(braze_emulator)
    third = cli.json("syncs", "run", sync_id)
    assert third["status"] == "succeeded", f"third dynamic run failed: {third}"
    assert third["added"] == 0, f"third dynamic run added members: {third}"
    assert third["removed"] == 0, f"third dynamic run removed members: {third}"
    assert third["requests"] == 0, f"third dynamic run counted Braze requests: {third}"
    sent = requests_after(braze_emulator, seq_before_third)
    assert sent == [], f"third dynamic run sent partner requests: {sent}"

    history = cli.json("syncs", "show", sync_id)
    run_ids = [r["id"] for r in history["runs"]]
    assert sorted(run_ids) == sorted([first["id"], second["id"], third["id"]]), (
        f"syncs show should list the three runs of sync {sync_id}: {history}"
    )

    # BufferedConsumer sends a batch whenever max_size records are buffered, and flush() sends
    # the rest.
    # With max_size 2, buffered-3's event only arrives in the batch that flush() sends.
    buffered_consumer = BufferedConsumer(
        max_size=2, request_timeout=MIXPANEL_TIMEOUT_SECS, **endpoints
    )
    buffered = Mixpanel(project["token"], consumer=buffered_consumer)
    buffered_events = ["buffered-1", "buffered-1", "buffered-2", "buffered-2", "buffered-3"]
    for user in buffered_events:
        buffered.track(user, "Buffered Event", {"batch": True})
    buffered_consumer.flush()
    users_tracked_this_month.update(buffered_events)

    buffered_cohort_id = create_cohort(
        cli, tmp_path, BUFFERED_COHORT_NAME, BUFFERED_COHORT_DEFINITION
    )
    members = cohort_members(cli, buffered_cohort_id)
    assert members == ["buffered-1", "buffered-2", "buffered-3"], (
        f"every BufferedConsumer batch should arrive: {members}"
    )

    # Every user above has an event timed now, so MTU for this month counts each once.
    report = cli.json("mtu", "--month", month)
    assert report["month"] == month, f"mtu reported another month: {report}"
    assert report["users"] == len(users_tracked_this_month), (
        f"mtu should count the {len(users_tracked_this_month)} users tracked this month "
        f"({sorted(users_tracked_this_month)}): {report}"
    )
