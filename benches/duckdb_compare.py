"""Runs the cohort benchmark's cohorts in DuckDB over the same data and compares.

Reads `events.csv`, `profiles.csv`, `engine.json` and `engine-<cohort>.txt` from the folder
that `cargo bench -p cohortbridge --bench cohorts -- --out DIR` wrote. Loads the CSV files into
DuckDB tables first, which is not timed. Then times each cohort's query (median of five runs)
and checks that DuckDB returns exactly the engine's member set. Prints a Markdown table with
the ratio of cohortbridge's time to DuckDB's.

Usage: python benches/duckdb_compare.py DIR
"""

import json
import statistics
import sys
import time
from pathlib import Path

import duckdb

NOW = 1_772_323_200_000  # 2026-03-01T00:00:00Z, the benchmark's evaluation instant.
DAY = 86_400_000
RUNS = 5


def window(days):
    return f"time_ms BETWEEN {NOW - days * DAY} AND {NOW}"


# The same cohorts as `cohorts()` in crates/cohortbridge/benches/cohorts.rs, in UTC. The users
# of the project are every distinct id with an event and every profile.
QUERIES = {
    "count_last_30_days": f"""
        SELECT distinct_id FROM events
        WHERE event = 'Purchase' AND {window(30)}
        GROUP BY distinct_id HAVING count(*) >= 2""",
    "where_sum_last_60_days": f"""
        SELECT distinct_id FROM events
        WHERE event = 'Purchase' AND currency = 'EUR' AND {window(60)}
        GROUP BY distinct_id HAVING sum(amount) >= 100""",
    "distinct_days_last_7_days": f"""
        SELECT distinct_id FROM events
        WHERE event = 'App Open' AND {window(7)}
        GROUP BY distinct_id HAVING count(DISTINCT time_ms // {DAY}) >= 5""",
    "first_time_last_14_days": f"""
        SELECT distinct_id FROM events
        WHERE event = 'Sign Up' AND time_ms <= {NOW}
        GROUP BY distinct_id HAVING min(time_ms) >= {NOW - 14 * DAY}""",
    "profile_and_did_not": f"""
        SELECT distinct_id FROM profiles WHERE plan = 'pro'
        EXCEPT
        SELECT distinct_id FROM events WHERE event = 'Churned' AND {window(90)}""",
    "at_most_one_purchase": f"""
        SELECT distinct_id FROM users
        EXCEPT
        SELECT distinct_id FROM events
        WHERE event = 'Purchase' AND {window(30)}
        GROUP BY distinct_id HAVING count(*) > 1""",
}


def main():
    folder = Path(sys.argv[1])
    engine = json.loads((folder / "engine.json").read_text())
    db = duckdb.connect()
    db.execute(
        f"""CREATE TABLE events AS SELECT * FROM read_csv('{folder / "events.csv"}', header = true,
        columns = {{'event': 'VARCHAR', 'distinct_id': 'VARCHAR', 'time_ms': 'BIGINT',
                    'amount': 'DOUBLE', 'currency': 'VARCHAR'}})"""
    )
    db.execute(
        f"""CREATE TABLE profiles AS SELECT * FROM read_csv('{folder / "profiles.csv"}',
        header = true, columns = {{'distinct_id': 'VARCHAR', 'plan': 'VARCHAR'}})"""
    )
    db.execute(
        "CREATE TABLE users AS SELECT distinct_id FROM events UNION SELECT distinct_id FROM profiles"
    )
    threads = db.execute("SELECT current_setting('threads')").fetchone()[0]

    print(f"{engine['users']} users, {engine['events']} events; DuckDB {duckdb.__version__}, "
          f"{threads} threads")
    print()
    print("| cohort | members | cohortbridge ms | DuckDB ms | ratio | same members "
          "| cohortbridge first run ms | with profiles ms |")
    print("|---|---|---|---|---|---|---|---|")
    all_same = True
    for name, sql in QUERIES.items():
        times = []
        rows = []
        for _ in range(RUNS):
            started = time.perf_counter()
            rows = db.execute(sql).fetchall()
            times.append((time.perf_counter() - started) * 1000)
        duck_members = {row[0] for row in rows}
        engine_text = (folder / f"engine-{name}.txt").read_text()
        engine_members = set(engine_text.split("\n")) if engine_text else set()
        same = duck_members == engine_members
        all_same = all_same and same
        engine_ms = engine["cohorts"][name]["median_ms"]
        duck_ms = statistics.median(times)
        first_ms = engine["cohorts"][name]["first_ms"]
        profiles_ms = engine["cohorts"][name]["with_profiles_ms"]
        print(f"| {name} | {len(engine_members)} | {engine_ms:.1f} | {duck_ms:.1f} | "
              f"{engine_ms / duck_ms:.2f} | {'yes' if same else 'NO'} | {first_ms:.1f} "
              f"| {profiles_ms:.1f} |")
    print()
    print(f"index build: {engine['index_build_ms']:.0f} ms; "
          f"keeping count_last_30_days current after 10,000 new events: "
          f"{engine['incremental_10k_ms']:.2f} ms, median of ten batches "
          f"{engine['median_incremental_10k_ms']:.2f} ms "
          f"({engine['median_incremental_10k_cpu_ms']:.2f} ms of CPU time); one hour passing: "
          f"{engine['advance_one_hour_ms']:.2f} ms")
    print(f"memory per million events: kept rows {engine['rss_rows_mib_per_million_events']:.0f} MiB, "
          f"index {engine['rss_index_mib_per_million_events']:.0f} MiB, "
          f"live cohort {engine['rss_live_mib_per_million_events']:.0f} MiB; "
          f"peak resident memory {engine['peak_rss_mib']:.0f} MiB")
    if not all_same:
        sys.exit("DuckDB and cohortbridge returned different members")


if __name__ == "__main__":
    main()
