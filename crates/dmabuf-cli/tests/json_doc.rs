//! docs/json.md cannot drift silently: every subcommand that takes
//! `--json` has a section there, and the fields of each documented example
//! (a real output, quoted from a run) are exactly those the command prints
//! here: the same keys at the top level and in every nested object the
//! two have in common (first array elements included).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::Value;

fn dmabuf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args(args)
        .output()
        .expect("run dmabuf")
}

/// The doc's sections: heading command (`dmabuf ls --json`) and the last
/// JSON value of its first ```json block (its last line when the block
/// holds one document per line, as `--watch` prints).
fn documented() -> Vec<(String, Value)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/json.md");
    let text = std::fs::read_to_string(path).expect("docs/json.md");
    let mut out = Vec::new();
    let mut heading: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix("## `") {
            heading = Some(h.trim_end_matches('`').to_string());
        } else if line.trim() == "```json" {
            let mut block = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                block.push_str(l);
                block.push('\n');
            }
            if let Some(h) = heading.take() {
                let last = serde_json::Deserializer::from_str(&block)
                    .into_iter::<Value>()
                    .map(|v| v.unwrap_or_else(|e| panic!("{h}: the example is not JSON: {e}")))
                    .last()
                    .unwrap_or_else(|| panic!("{h}: empty example"));
                out.push((h, last));
            }
        }
    }
    out
}

/// Differences of keys between `doc` and `real`, at `path` and below.
fn shape_diff(path: &str, doc: &Value, real: &Value, diffs: &mut Vec<String>) {
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => {
            let dk: BTreeSet<&String> = d.keys().collect();
            let rk: BTreeSet<&String> = r.keys().collect();
            for k in dk.difference(&rk) {
                diffs.push(format!("{path}.{k}: documented, not printed"));
            }
            for k in rk.difference(&dk) {
                diffs.push(format!("{path}.{k}: printed, not documented"));
            }
            for k in dk.intersection(&rk) {
                shape_diff(&format!("{path}.{k}"), &d[*k], &r[*k], diffs);
            }
        }
        (Value::Array(d), Value::Array(r)) => {
            if let (Some(d0), Some(r0)) = (d.first(), r.first()) {
                shape_diff(&format!("{path}[0]"), d0, r0, diffs);
            }
        }
        _ => {}
    }
}

fn json_of(args: &[&str]) -> Value {
    let out = dmabuf(args);
    assert!(
        out.status.success(),
        "dmabuf {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // The last document (the last round of `--watch`).
    serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(|v| v.unwrap_or_else(|e| panic!("dmabuf {args:?}: not JSON: {e}\n{text}")))
        .last()
        .expect("a JSON document")
}

/// Subcommands whose help lists `--json`.
fn json_subcommands() -> Vec<String> {
    let help = String::from_utf8(dmabuf(&["--help"]).stdout).unwrap();
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect();
    assert!(names.contains(&"ls".to_string()), "{help}");
    names
        .into_iter()
        .filter(|n| {
            let h = dmabuf(&[n.as_str(), "--help"]);
            String::from_utf8_lossy(&h.stdout).contains("--json")
        })
        .collect()
}

#[test]
fn every_json_command_is_documented_with_its_real_fields() {
    let docs = documented();
    let headings: Vec<&str> = docs.iter().map(|(h, _)| h.as_str()).collect();

    for sub in json_subcommands() {
        assert!(
            headings
                .iter()
                .any(|h| h.starts_with(&format!("dmabuf {sub} "))),
            "docs/json.md has no section for `dmabuf {sub} --json`: {headings:?}"
        );
    }

    // A portable buffer held while `ls` looks, so that its lists are not
    // empty here either.
    let mut held = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .args([
            "alloc",
            "--size",
            "64K",
            "--backend",
            "portable",
            "--name",
            "camera-frame",
            "--fill",
            "0xab",
            "--json",
            "--hold-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(held.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let alloc: Value = serde_json::from_str(&line).unwrap();
    let pid = held.id().to_string();

    let mut checked = 0;
    let mut diffs = Vec::new();
    for (heading, example) in &docs {
        let real = if heading.starts_with("dmabuf probe") {
            json_of(&["probe", "--json"])
        } else if heading.starts_with("dmabuf alloc") {
            alloc.clone()
        } else if heading.starts_with("dmabuf ls") && heading.contains("--watch") {
            json_of(&[
                "ls", "--json", "--watch", "0.05", "--count", "2", "--pid", &pid,
            ])
        } else if heading.starts_with("dmabuf ls") {
            json_of(&["ls", "--json", "--pid", &pid])
        } else if heading.starts_with("dmabuf stream") {
            json_of(&[
                "stream",
                "--json",
                "--count",
                "20",
                "--size",
                "4K",
                "--backend",
                "portable",
            ])
        } else if heading.starts_with("dmabuf bench") {
            json_of(&[
                "bench",
                "--quick",
                "--seconds",
                "0.01",
                "--backend",
                "portable",
                "--json",
            ])
        } else {
            panic!("docs/json.md: no host run known for `{heading}`");
        };
        assert_eq!(
            example["schema_version"], real["schema_version"],
            "{heading}: documented schema_version differs"
        );
        shape_diff(heading, example, &real, &mut diffs);
        checked += 1;
    }
    let _ = held.stdin.take().unwrap().write_all(b"\n");
    let _ = held.wait();
    assert!(checked >= 6, "{headings:?}");
    assert!(
        diffs.is_empty(),
        "docs/json.md drifted:\n{}",
        diffs.join("\n")
    );
}
