//! Checks of the whole workspace that belong to no crate (test only).
//!
//! The workspace's `rust-version` is a promise that only half of the tests
//! can keep on a machine with the stable toolchain alone: clippy's
//! `incompatible_msrv` lint (on in `scripts/test-all`) refuses standard
//! library items newer than it, and the test below refuses a dependency in
//! Cargo.lock that declares a newer `rust-version` (cargo would refuse to
//! build it with the older toolchain). Language features newer than the
//! `rust-version` are not caught by either; see the README.

use std::process::Command;

/// `1.85` or `1.85.0` as (1, 85, 0); None when not a version.
fn version(s: &str) -> Option<(u64, u64, u64)> {
    let mut parts = s.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

#[test]
fn versions_compare_as_numbers() {
    assert_eq!(version("1.85"), Some((1, 85, 0)));
    assert_eq!(version("1.85.1"), Some((1, 85, 1)));
    assert!(version("1.9").unwrap() < version("1.85").unwrap());
    assert_eq!(version("x"), None);
}

/// No package in Cargo.lock needs a newer Rust than the workspace's
/// `rust-version` (the resolver is "3", which prefers such versions; this
/// catches a lock file that did not).
#[test]
fn no_dependency_needs_a_newer_rust_than_the_workspace() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = meta["packages"].as_array().unwrap();
    let msrv = packages
        .iter()
        .filter(|p| members.contains(&p["id"].as_str().unwrap_or("")))
        .map(|p| {
            let v = p["rust_version"]
                .as_str()
                .expect("every member has a rust-version");
            version(v).expect("a version")
        })
        .min()
        .expect("members");
    assert_eq!(msrv, (1, 85, 0), "the README states 1.85");
    let newer: Vec<String> = packages
        .iter()
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            (version(v)? > msrv).then(|| format!("{} {} needs Rust {v}", p["name"], p["version"]))
        })
        .collect();
    assert!(newer.is_empty(), "{newer:#?}");
    assert!(
        packages.len() > 20,
        "cargo metadata listed {}",
        packages.len()
    );
}
