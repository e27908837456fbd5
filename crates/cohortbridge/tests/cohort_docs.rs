//! Every cohort definition shown in `docs/cohorts.md` and every example in
//! `docs/cohort-definition.schema.json` is accepted by the parser.

use cohortbridge::cohorts::parse;
use serde_json::{json, Value};

fn docs_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name)
}

/// The ```json blocks of a Markdown file.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```json") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn markdown_examples_parse() {
    let markdown = std::fs::read_to_string(docs_path("cohorts.md")).unwrap();
    let blocks = json_blocks(&markdown);
    assert!(blocks.len() >= 15, "found only {} examples", blocks.len());
    for block in blocks {
        let value: Value = serde_json::from_str(&block).unwrap_or_else(|e| panic!("{block}: {e}"));
        if let Err(e) = parse(&value) {
            panic!("documented example {block} is rejected: {e}");
        }
    }
}

#[test]
fn schema_examples_parse() {
    let text = std::fs::read_to_string(docs_path("cohort-definition.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let definitions = schema["$defs"].as_object().unwrap();
    let mut checked = 0;
    for (name, form) in definitions {
        let Some(examples) = form.get("examples").and_then(Value::as_array) else {
            continue;
        };
        for example in examples {
            // Windows and event filters are parts of an event condition, so wrap them in one.
            let definition = match name.as_str() {
                "window" => json!({"event": "E", "within": example}),
                "event_filter" => json!({"event": "E", "where": [example]}),
                _ => example.clone(),
            };
            if let Err(e) = parse(&definition) {
                panic!("schema example of {name} {example} is rejected: {e}");
            }
            checked += 1;
        }
    }
    for form in [
        "all",
        "any",
        "not",
        "in_cohort",
        "event",
        "profile",
        "window",
        "event_filter",
    ] {
        assert!(
            definitions[form]["examples"]
                .as_array()
                .is_some_and(|e| !e.is_empty()),
            "form {form} has no example"
        );
    }
    assert!(checked >= 30, "checked only {checked} examples");
}
