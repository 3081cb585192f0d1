//! Building the guest programs: the `dmabuf-lab-guest` test binaries and the
//! `dmabuf` CLI, statically linked, in their own target directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::bail;
use crate::util::{show, Context, Result};

/// The only Rust target available here; `--target` keeps build scripts and
/// proc-macros dynamic while the guest binaries are static.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// A test executable cargo built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestExe {
    /// The test target's name (`kernel_smoke`, or the crate name for unit tests).
    pub name: String,
    /// Where cargo put it.
    pub path: PathBuf,
}

/// Profile settings of every guest build, as cargo's environment overrides
/// (they apply to the `dev`, `test` and `release` profiles the guest builds
/// use).
pub const GUEST_PROFILE: [(&str, &str); 6] = [
    ("CARGO_PROFILE_DEV_DEBUG", "false"),
    ("CARGO_PROFILE_DEV_STRIP", "debuginfo"),
    ("CARGO_PROFILE_TEST_DEBUG", "false"),
    ("CARGO_PROFILE_TEST_STRIP", "debuginfo"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
];

fn cargo(repo: &Path, target_dir: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(repo)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // No debug info in the guest binaries: even with line tables only,
        // the statically linked std's debug info made every test binary
        // ~12 MB (of which ~10 MB DWARF) and the initramfs ~110 MiB, which
        // TCG spends seconds unpacking at every boot. `strip = "debuginfo"`
        // keeps the symbol table, so a panic's backtrace still names every
        // function (without file:line; the panic message itself keeps its
        // location). Only this target directory (`target/lab`) sees these
        // settings: the host's builds stay cached.
        .envs(GUEST_PROFILE)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Runs cargo with `--message-format=json-render-diagnostics` and returns its
/// JSON messages (diagnostics go to the terminal as usual).
fn run_json(mut cmd: Command) -> Result<Vec<serde_json::Value>> {
    let shown = show(&cmd);
    eprintln!("lab: $ {shown}");
    let mut child = cmd.spawn().with_ctx(|| format!("cannot start `{shown}`"))?;
    let mut msgs = vec![];
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.with_ctx(|| format!("reading the output of `{shown}`"))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            msgs.push(v);
        }
    }
    let st = child.wait().with_ctx(|| format!("waiting for `{shown}`"))?;
    if !st.success() {
        bail!("`{shown}` failed ({st}); see the compiler output above");
    }
    Ok(msgs)
}

/// Test executables in cargo's JSON messages.
pub fn test_executables(msgs: &[serde_json::Value]) -> Vec<TestExe> {
    let mut out: Vec<TestExe> = msgs
        .iter()
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| {
            Some(TestExe {
                name: m["target"]["name"].as_str()?.to_string(),
                path: PathBuf::from(m["executable"].as_str()?),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// The executable of binary target `bin` in cargo's JSON messages.
pub fn bin_executable(msgs: &[serde_json::Value], bin: &str) -> Option<PathBuf> {
    msgs.iter()
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Builds the guest tests (`cargo test -p dmabuf-lab-guest --features lab
/// --no-run`) and returns them.
pub fn build_tests(repo: &Path, target_dir: &Path) -> Result<Vec<TestExe>> {
    let mut c = cargo(repo, target_dir);
    c.args([
        "test",
        "-p",
        "dmabuf-lab-guest",
        // The guest tests are built only with this feature (they are not
        // host test targets; lab/guest/Cargo.toml).
        "--features",
        "lab",
        "--no-run",
        "--target",
        TARGET,
    ])
    .arg("--message-format=json-render-diagnostics");
    let exes = test_executables(&run_json(c)?);
    if exes.is_empty() {
        bail!("cargo built no test executables for dmabuf-lab-guest");
    }
    Ok(exes)
}

/// Builds the `dmabuf` CLI for the guest, in release (what users run, and
/// faster under TCG) with its default features (no iceoryx2), and returns
/// its path.
pub fn build_cli(repo: &Path, target_dir: &Path) -> Result<PathBuf> {
    let mut c = cargo(repo, target_dir);
    c.args([
        "build",
        "--release",
        "-p",
        "dmabuf-cli",
        "--bin",
        "dmabuf",
        "--target",
        TARGET,
    ])
    .arg("--message-format=json-render-diagnostics");
    bin_executable(&run_json(c)?, "dmabuf")
        .ok_or_else(|| crate::util::Error::msg("cargo built no `dmabuf` executable for dmabuf-cli"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in lab/guest/tests/ is declared in lab/guest/Cargo.toml
    /// with `required-features = ["lab"]`: one that is not would be an
    /// ordinary host test target and panic in `cargo test --workspace`.
    #[test]
    fn every_guest_test_needs_the_lab_feature() {
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
        let manifest = std::fs::read_to_string(guest.join("Cargo.toml")).unwrap();
        let mut declared = Vec::new();
        for block in manifest.split("[[test]]").skip(1) {
            let field = |key: &str| {
                block.lines().find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().to_string())
                })
            };
            let name = field("name").expect("a [[test]] without a name");
            assert_eq!(
                field("required-features").as_deref(),
                Some(r#"["lab"]"#),
                "[[test]] {name}"
            );
            declared.push(name.trim_matches('"').to_string());
        }
        let mut files: Vec<String> = std::fs::read_dir(guest.join("tests"))
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                Some(name.strip_suffix(".rs")?.to_string())
            })
            .collect();
        files.sort();
        declared.sort();
        assert_eq!(
            files, declared,
            "lab/guest/tests/*.rs vs [[test]] in lab/guest/Cargo.toml"
        );
        assert!(files.len() > 10, "{files:?}");
    }

    /// The guest builds go to their own target directory, without debug
    /// info (symbols kept), whatever profile they use.
    #[test]
    fn guest_builds_are_stripped_and_kept_apart() {
        let c = cargo(Path::new("/repo"), Path::new("/repo/target/lab"));
        let env = |k: &str| {
            c.get_envs()
                .find(|(name, _)| *name == k)
                .and_then(|(_, v)| v)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(env("CARGO_TARGET_DIR").as_deref(), Some("/repo/target/lab"));
        assert_eq!(
            env("RUSTFLAGS").as_deref(),
            Some("-C target-feature=+crt-static")
        );
        for profile in ["DEV", "TEST", "RELEASE"] {
            let debug = format!("CARGO_PROFILE_{profile}_DEBUG");
            let strip = format!("CARGO_PROFILE_{profile}_STRIP");
            assert_eq!(env(&debug).as_deref(), Some("false"), "{debug}");
            assert_eq!(env(&strip).as_deref(), Some("debuginfo"), "{strip}");
        }
    }

    #[test]
    fn finds_test_and_bin_executables() {
        let msgs: Vec<serde_json::Value> = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"dmabuf_lab_guest"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"kernel_smoke"},"profile":{"test":true},"executable":"/t/kernel_smoke-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"dmabuf_lab_guest"},"profile":{"test":true},"executable":"/t/dmabuf_lab_guest-2"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["custom-build"],"name":"build-script-build"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"dmabuf"},"profile":{"test":false},"executable":"/t/dmabuf"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        assert_eq!(
            test_executables(&msgs),
            [
                TestExe {
                    name: "dmabuf_lab_guest".into(),
                    path: "/t/dmabuf_lab_guest-2".into()
                },
                TestExe {
                    name: "kernel_smoke".into(),
                    path: "/t/kernel_smoke-1".into()
                },
            ]
        );
        assert_eq!(bin_executable(&msgs, "dmabuf"), Some("/t/dmabuf".into()));
        assert_eq!(bin_executable(&msgs, "other"), None);
    }
}
