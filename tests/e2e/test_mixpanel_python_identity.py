"""Original ID Merge driven by the official Mixpanel Python library.

The project is switched to Original ID Merge with the CLI before it has data. Events go in
through `mixpanel` (PyPI): historical ones through `import_data` (/import with the API secret as
HTTP Basic user and `verbose=1`), an `$identify` through `track`, and a `$merge` through the
library's `merge`, which /import accepts only with the API secret. Cohort members, read with the
CLI, show that earlier events moved to the merged user.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from mixpanel import Consumer, Mixpanel

from conftest import CohortBridge
from test_mixpanel_python import MIXPANEL_TIMEOUT_SECS, cohort_members, create_cohort

DAY_SECS = 86_400


def test_original_id_merge_with_mixpanel_library(
    cohortbridge: CohortBridge, tmp_path: Path
) -> None:
    cli = cohortbridge
    set_mode = cli.json("projects", "set", "--identity-mode", "original")
    assert set_mode["identity_mode"] == "original"

    project = cli.json("projects", "show")
    base = cli.base_url
    consumer = Consumer(
        events_url=f"{base}/track",
        people_url=f"{base}/engage",
        import_url=f"{base}/import",
        request_timeout=MIXPANEL_TIMEOUT_SECS,
    )
    mp = Mixpanel(project["token"], consumer=consumer)
    secret = cli.json("projects", "rotate-api-secret")["api_secret"]
    now = time.time()

    # Two ids of one person, each with a purchase in the past.
    mp.import_data(None, "py-old-account", "Purchase", int(now - 20 * DAY_SECS), api_secret=secret)
    mp.import_data(None, "py-new-account", "Purchase", int(now - 10 * DAY_SECS), api_secret=secret)
    purchasers = create_cohort(cli, tmp_path, "Purchasers", {"event": "Purchase"})
    assert cohort_members(cli, purchasers) == ["py-new-account", "py-old-account"]

    mp.merge(None, "py-new-account", "py-old-account", api_secret=secret)
    assert cohort_members(cli, purchasers) == ["py-new-account"]

    # An anonymous visitor browses, then identifies: the earlier event moves to the user.
    anon_id = str(uuid.uuid4())
    mp.track(anon_id, "Browsed", {"time": int(now - 60)})
    mp.track("py-user", "$identify", {"$identified_id": "py-user", "$anon_id": anon_id})
    browsers = create_cohort(cli, tmp_path, "Browsers", {"event": "Browsed"})
    assert cohort_members(cli, browsers) == ["py-user"]
