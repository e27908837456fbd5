//! CLI commands that change a cohort or ask questions about one: `cohorts update`,
//! `cohorts preview`, `cohorts explain`, and `projects set --timezone`.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use super::{text, urlencode, AdminClient};

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub async fn set_timezone(
    client: &AdminClient,
    timezone: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    let reply = client
        .put("/timezone", &json!({"timezone": timezone}))
        .await?;
    if json_output {
        print_json(&reply);
    } else {
        println!(
            "project {} time zone: {}",
            reply["id"],
            text(&reply["timezone"])
        );
    }
    Ok(())
}

pub async fn update(
    client: &AdminClient,
    id: i64,
    name: Option<String>,
    file: &Path,
    json_output: bool,
) -> anyhow::Result<()> {
    let body =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let definition: Value = serde_json::from_str(&body)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let cohort = client
        .put(
            &format!("/cohorts/{id}"),
            &json!({"name": name, "definition": definition}),
        )
        .await?;
    if json_output {
        print_json(&cohort);
    } else {
        println!("cohort {} updated", cohort["id"]);
    }
    Ok(())
}

pub async fn preview(
    client: &AdminClient,
    id: i64,
    connection: Option<String>,
    sample: usize,
    json_output: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/cohorts/{id}/preview?sample={sample}");
    if let Some(connection) = &connection {
        path.push_str(&format!("&connection={}", urlencode(connection)));
    }
    let reply = client.get(&path).await?;
    if json_output {
        print_json(&reply);
        return Ok(());
    }
    println!("members:        {}", reply["count"]);
    println!(
        "exportable:     {} (with a value in {})",
        reply["exportable"],
        text(&reply["user_id_property"])
    );
    println!("not exportable: {}", reply["not_exportable"]);
    println!("sample:");
    for member in reply["sample"].as_array().into_iter().flatten() {
        println!("  {}", text(member));
    }
    Ok(())
}

pub async fn explain(
    client: &AdminClient,
    id: i64,
    user: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    let reply = client
        .get(&format!("/cohorts/{id}/explain?user={}", urlencode(user)))
        .await?;
    if json_output {
        print_json(&reply);
        return Ok(());
    }
    let verdict = if reply["member"] == true {
        "is a member"
    } else {
        "is not a member"
    };
    println!("{} {verdict} of cohort {id}", text(&reply["user"]));
    if reply["canonical_id"] != reply["user"] {
        println!("(resolved to the user {})", text(&reply["canonical_id"]));
    }
    if reply["known"] != true {
        println!("no event or profile is stored for this user");
    }
    for condition in reply["conditions"].as_array().into_iter().flatten() {
        let mark = if condition["holds"] == true {
            "yes"
        } else {
            "no "
        };
        println!(
            "  [{mark}] {}: {}\n        {}",
            text(&condition["path"]),
            text(&condition["condition"]),
            text(&condition["reason"])
        );
    }
    Ok(())
}
