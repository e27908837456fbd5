//! Three real server processes on one PostgreSQL database. Ingestion and admin calls go to all of
//! them, a dynamic sync runs on whichever node leases it, and the node running it is killed with
//! SIGKILL in the middle of a run. Afterwards Braze contains exactly the cohort's exportable members,
//! no two runs overlapped, and only ids whose request was unacknowledged at the kill were applied
//! twice. Also checks that profile updates sent to two nodes at once all apply. Runs only with
//! `COHORTBRIDGE_TEST_DATABASE_URL`, because SQLite serves one process.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDatabase, TestEmulator, DATA_IMPORT_KEY, PARTNER_API_KEY, PARTNER_NAME};
use serde_json::{json, Value};

const ADMIN_KEY: &str = "multi-node-admin-key-0123456789";
/// The same encryption key on every node, as a deployment must have.
const SECRET_KEY: &str = "6d756c74692d6e6f64652d746573742d6b65792d303132333435363738396162";
const BRAZE_COHORT: &str = "cohortbridge-test-1-1";
const LEASE_SECS: &str = "2";

struct Node {
    id: String,
    child: Option<Child>,
    base: String,
    http: reqwest::Client,
}

impl Node {
    fn spawn(id: &str, data_dir: &std::path::Path, database: &TestDatabase) -> Child {
        Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .args(["serve", "--listen", "127.0.0.1:0", "--node-id", id])
            .args(["--allow-custom-braze-url", "--secret-key", SECRET_KEY])
            .args(["--braze-partner-name", PARTNER_NAME])
            .args(["--braze-partner-api-key", PARTNER_API_KEY])
            .args(["--braze-retry-base-ms", "10", "--braze-max-attempts", "3"])
            .args(["--braze-timeout-secs", "5", "--sync-lease-secs", LEASE_SECS])
            .args([
                "--scheduler-tick-ms",
                "100",
                "--min-sync-interval-secs",
                "1",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .envs(database.envs())
            .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the cohortbridge binary starts")
    }

    /// Reads the node's address from its first lines.
    fn wait_listening(id: &str, mut child: Child) -> Self {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("node printed its address").unwrap();
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.to_owned();
            }
        };
        Self {
            id: id.to_owned(),
            child: Some(child),
            base,
            http: reqwest::Client::new(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/api/v1/projects/1{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path} on {}", self.id);
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/projects/1{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sets `plan` and the Braze id `ext-<n>` on users `u<n>`.
    async fn set_plans(&self, token: &str, users: &[usize], plan: &str) {
        let updates: Vec<Value> = users
            .iter()
            .map(|n| {
                json!({"$token": token, "$distinct_id": format!("u{n}"),
                    "$set": {"plan": plan, "$braze_external_id": format!("ext-{n}")}})
            })
            .collect();
        for chunk in updates.chunks(2000) {
            let response = self
                .http
                .post(format!("{}/engage", self.base))
                .form(&[("data", Value::Array(chunk.to_vec()).to_string())])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "engage on {}", self.id);
        }
    }

    /// Imports one `Purchase` a minute ago for each of users `u<n>`.
    async fn purchase(&self, api_secret: &str, users: &[usize]) {
        let time = chrono::Utc::now().timestamp() - 60;
        let body: String = users
            .iter()
            .map(|n| {
                let record = json!({"event": "Purchase", "properties": {"time": time,
                    "distinct_id": format!("u{n}"), "$insert_id": format!("p-{n}")}});
                format!("{record}\n")
            })
            .collect();
        let response = self
            .http
            .post(format!("{}/import?strict=1", self.base))
            .basic_auth(api_secret, Some(""))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "import on {}", self.id);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spreads users over `nodes` nodes: user `n` goes to node `(n + shift) % nodes`.
fn spread(users: impl Iterator<Item = usize>, nodes: usize, shift: usize) -> Vec<Vec<usize>> {
    let mut parts = vec![Vec::new(); nodes];
    for n in users {
        parts[(n + shift) % nodes].push(n);
    }
    parts
}

/// Ingests, through every node given, a purchase for each of `users` and their plan. Each
/// user's profile goes through another node than the user's event.
async fn ingest(nodes: &[&Node], token: &str, secret: &str, users: &[usize], plan: &str) {
    let count = nodes.len();
    for (node, part) in nodes.iter().zip(spread(users.iter().copied(), count, 0)) {
        node.purchase(secret, &part).await;
    }
    for (node, part) in nodes.iter().zip(spread(users.iter().copied(), count, 1)) {
        node.set_plans(token, &part, plan).await;
    }
}

fn exportable(pro: &BTreeSet<usize>) -> BTreeSet<String> {
    pro.iter().map(|n| format!("ext-{n}")).collect()
}

/// Waits until Braze contains `expected` and the last run of sync 1 succeeded with no run in
/// progress, asking `node`.
async fn wait_converged(node: &Node, emulator: &TestEmulator, expected: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let members: BTreeSet<String> = emulator.members(BRAZE_COHORT).await.into_iter().collect();
        let shown = node.get("/syncs/1").await;
        let runs = shown["runs"].as_array().unwrap();
        let idle = runs.iter().all(|run| run["status"] != "running");
        let last_succeeded = runs.last().is_some_and(|run| run["status"] == "succeeded");
        if &members == expected && idle && last_succeeded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Braze never converged: {} members, {} expected; runs {}",
            members.len(),
            expected.len(),
            shown["runs"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn three_nodes_survive_sigkill_during_sync() {
    let folders: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let database = TestDatabase::create(folders[0].path()).await;
    if !database.is_postgres() {
        eprintln!("skipped: the multi-node test needs COHORTBRIDGE_TEST_DATABASE_URL");
        return;
    }
    let emulator = TestEmulator::start().await;
    // Every partner request waits, so that a run lasts long enough to be killed half-way.
    emulator
        .inject(json!({"delay_ms": 100, "times": 100_000}))
        .await;

    // The three nodes start together, so they also race to create the first project.
    let ids = ["node-0", "node-1", "node-2"];
    let children: Vec<Child> = ids
        .iter()
        .zip(&folders)
        .map(|(id, folder)| Node::spawn(id, folder.path(), &database))
        .collect();
    let mut nodes: Vec<Node> = ids
        .iter()
        .zip(children)
        .map(|(id, child)| Node::wait_listening(id, child))
        .collect();
    let projects = database
        .query_strings("SELECT count(*)::text FROM projects")
        .await;
    assert_eq!(
        projects,
        vec!["1"],
        "the nodes created one project between them"
    );
    let project = nodes[1].get("").await;
    let token = project["token"].as_str().unwrap().to_owned();
    let (status, reply) = nodes[0].post("/api-secret", &json!({})).await;
    assert_eq!(status, 200, "{reply}");
    let secret = reply["api_secret"].as_str().unwrap().to_owned();

    let mut pro: BTreeSet<usize> = (0..3_000).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    ingest(
        &all,
        &token,
        &secret,
        &pro.iter().copied().collect::<Vec<_>>(),
        "pro",
    )
    .await;
    let (status, body) = nodes[0]
        .post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let definition = json!({"all": [
        {"profile": "plan", "op": "eq", "value": "pro"},
        {"event": "Purchase", "count": {"gte": 1}, "within": {"last_days": 30}}
    ]});
    let (status, body) = nodes[1]
        .post(
            "/cohorts",
            &json!({"name": "Pro buyers", "definition": definition}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // An event stored through node 0 and a profile through node 1 count at once on node 2.
    nodes[0].purchase(&secret, &[90_000]).await;
    nodes[1].set_plans(&token, &[90_000], "pro").await;
    let members = nodes[2].get("/cohorts/1/members").await;
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .contains(&json!("u90000")),
        "node 2 misses the user written through nodes 0 and 1"
    );
    pro.insert(90_000);

    let export = json!({"cohort_id": 1, "connection": "emu", "mode": "dynamic", "every_secs": 1});
    let (status, body) = nodes[2].post("/exports", &export).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["run"]["status"], "succeeded", "{body}");
    wait_converged(&nodes[0], &emulator, &exportable(&pro)).await;

    // Churn big enough for a run of several requests: 3,000 join, 500 leave.
    let joining: Vec<usize> = (3_000..6_000).collect();
    let leaving: Vec<usize> = (0..500).collect();
    ingest(&all, &token, &secret, &joining, "pro").await;
    ingest(&all, &token, &secret, &leaving, "free").await;
    pro.extend(&joining);
    pro.retain(|n| !leaving.contains(n));
    drop(all);

    // Kill whichever node owns the lease once Braze has acknowledged a request of its run.
    let before = emulator.emulator.requests().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let owner = database
            .query_strings("SELECT coalesce(lease_owner, '') FROM syncs WHERE id = 1")
            .await;
        if !owner[0].is_empty() && emulator.emulator.requests().len() > before {
            break owner[0].clone();
        }
        assert!(Instant::now() < deadline, "no run started after the churn");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let victim_index = ids.iter().position(|id| *id == victim).unwrap();
    nodes[victim_index].kill();
    // The lease outlives the node for a while, so no node has touched its pending ids yet.
    let unacknowledged: HashSet<String> = database
        .query_strings("SELECT external_id FROM braze_pending")
        .await
        .into_iter()
        .collect();
    eprintln!(
        "killed {victim} during a run; {} ids were unacknowledged",
        unacknowledged.len()
    );
    let survivors: Vec<&Node> = nodes.iter().filter(|node| node.id != victim).collect();

    // More churn through the survivors while the sync is taken over.
    let joining: Vec<usize> = (6_000..6_500).collect();
    let leaving: Vec<usize> = (1_000..1_500).collect();
    ingest(&survivors, &token, &secret, &joining, "pro").await;
    ingest(&survivors, &token, &secret, &leaving, "free").await;
    pro.extend(&joining);
    pro.retain(|n| !leaving.contains(n));
    let expected = exportable(&pro);
    wait_converged(survivors[0], &emulator, &expected).await;

    // Braze contains exactly the cohort's exportable members, as every survivor computes them.
    let braze: BTreeSet<String> = emulator.members(BRAZE_COHORT).await.into_iter().collect();
    assert_eq!(braze.len(), expected.len());
    assert_eq!(braze, expected);
    for node in &survivors {
        let members = node.get("/cohorts/1/members").await;
        let computed: BTreeSet<String> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("ext-{}", &m.as_str().unwrap()[1..]))
            .collect();
        assert_eq!(computed, expected, "members computed on {}", node.id);
    }

    // The killed run is recorded as interrupted, and no two runs overlapped.
    let runs = survivors[1].get("/syncs/1").await["runs"].clone();
    let runs = runs.as_array().unwrap();
    assert!(
        runs.iter().any(|run| run["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("interrupted")),
        "the killed run is recorded as interrupted: {runs:?}"
    );
    for pair in runs.windows(2) {
        let finished = pair[0]["finished_at_ms"].as_i64().unwrap();
        let started = pair[1]["started_at_ms"].as_i64().unwrap();
        assert!(
            started >= finished,
            "run {} started before run {} finished",
            pair[1]["id"],
            pair[0]["id"]
        );
    }

    // Replaying what Braze applied: an add of a member or a remove of a non-member is an
    // operation applied twice. Only ids unacknowledged at the kill may be resent.
    let mut state: HashSet<String> = HashSet::new();
    let mut applied_twice = Vec::new();
    for request in emulator.emulator.requests() {
        if !request.applied || request.cohort_id.as_deref() != Some(BRAZE_COHORT) {
            continue;
        }
        for id in &request.ids_added {
            if !state.insert(id.clone()) {
                applied_twice.push((request.seq, id.clone()));
            }
        }
        for id in &request.ids_removed {
            if !state.remove(id) {
                applied_twice.push((request.seq, id.clone()));
            }
        }
    }
    eprintln!("{} ids were applied twice", applied_twice.len());
    for (seq, id) in &applied_twice {
        assert!(
            unacknowledged.contains(id),
            "request {seq} applied {id} a second time, though its first request was acknowledged"
        );
    }
    let distinct: HashSet<&String> = applied_twice.iter().map(|(_, id)| id).collect();
    assert_eq!(
        distinct.len(),
        applied_twice.len(),
        "an unacknowledged id was resent more than once"
    );
}

#[tokio::test]
async fn concurrent_profile_updates_add_up() {
    let folders: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let database = TestDatabase::create(folders[0].path()).await;
    if !database.is_postgres() {
        eprintln!("skipped: the multi-node test needs COHORTBRIDGE_TEST_DATABASE_URL");
        return;
    }
    let first = Node::wait_listening(
        "node-0",
        Node::spawn("node-0", folders[0].path(), &database),
    );
    let second = Node::wait_listening(
        "node-1",
        Node::spawn("node-1", folders[1].path(), &database),
    );
    let token = first.get("").await["token"].as_str().unwrap().to_owned();

    // Each node receives 40 increments of one counter at the same time as the other node.
    const PER_NODE: i64 = 40;
    let increment = |node: &Node| {
        let (http, url) = (node.http.clone(), format!("{}/engage", node.base));
        let update = json!([{"$token": token, "$distinct_id": "counter", "$add": {"visits": 1}}]);
        async move {
            for _ in 0..PER_NODE {
                let response = http
                    .post(&url)
                    .form(&[("data", update.to_string())])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }
    };
    tokio::join!(increment(&first), increment(&second));

    let stored = database
        .query_strings("SELECT properties FROM profiles WHERE distinct_id = 'counter'")
        .await;
    assert_eq!(stored.len(), 1);
    let properties: Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(
        properties["visits"],
        json!(2 * PER_NODE),
        "an update was lost: {properties}"
    );
}

#[tokio::test]
async fn runs_of_one_connection_take_turns() {
    let folders: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let database = TestDatabase::create(folders[0].path()).await;
    if !database.is_postgres() {
        eprintln!("skipped: the multi-node test needs COHORTBRIDGE_TEST_DATABASE_URL");
        return;
    }
    let emulator = TestEmulator::start().await;
    emulator
        .inject(json!({"delay_ms": 300, "times": 100_000}))
        .await;
    let nodes = [
        Node::wait_listening(
            "node-0",
            Node::spawn("node-0", folders[0].path(), &database),
        ),
        Node::wait_listening(
            "node-1",
            Node::spawn("node-1", folders[1].path(), &database),
        ),
    ];
    let project = nodes[0].get("").await;
    let token = project["token"].as_str().unwrap().to_owned();
    let (status, reply) = nodes[0].post("/api-secret", &json!({})).await;
    assert_eq!(status, 200, "{reply}");
    let secret = reply["api_secret"].as_str().unwrap().to_owned();
    let users: Vec<usize> = (0..1_000).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    ingest(&all, &token, &secret, &users, "pro").await;
    let (status, body) = nodes[0]
        .post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Two cohorts with the same members, each with a dynamic sync through the one connection.
    for (node, name) in nodes.iter().zip(["Pro one", "Pro two"]) {
        let definition = json!({"profile": "plan", "op": "eq", "value": "pro"});
        let (status, body) = node
            .post("/cohorts", &json!({"name": name, "definition": definition}))
            .await;
        assert_eq!(status, 201, "{body}");
        let export = json!({"cohort_id": body["id"], "connection": "emu", "mode": "dynamic",
            "every_secs": 3600});
        let (status, body) = node.post("/exports", &export).await;
        assert_eq!(status, 201, "{body}");
    }

    // Each round changes every member, then runs sync 1 on node 0 and sync 2 on node 1 at the
    // same moment; each run has a slow request to send.
    let mut runs = Vec::new();
    for round in 0..3 {
        let plan = if round % 2 == 0 { "free" } else { "pro" };
        ingest(&all, &token, &secret, &users, plan).await;
        let empty = json!({});
        let (first, second) = tokio::join!(
            nodes[0].post("/syncs/1/run", &empty),
            nodes[1].post("/syncs/2/run", &empty)
        );
        for (status, run) in [first, second] {
            assert_eq!(status, 200, "{run}");
            assert_eq!(run["status"], "succeeded", "{run}");
            assert!(run["requests"].as_i64().unwrap() >= 1, "{run}");
            runs.push(run);
        }
    }

    // The two runs of each round sent through the connection one after the other.
    for pair in runs.chunks(2) {
        let mut spans: Vec<(i64, i64)> = pair
            .iter()
            .map(|run| {
                let started = run["started_at_ms"].as_i64().unwrap();
                let finished = run["finished_at_ms"].as_i64().unwrap();
                (started, finished)
            })
            .collect();
        spans.sort();
        assert!(
            spans[1].0 >= spans[0].1,
            "runs {} and {} overlapped",
            pair[0]["id"],
            pair[1]["id"]
        );
    }
}
