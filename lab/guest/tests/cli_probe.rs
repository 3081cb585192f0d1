//! `dmabuf probe` on the real kernel: it finds udmabuf, the system heap and
//! working sync files, in the table and in JSON.

use std::process::Command;

use dmabuf_lab_guest::{cli, require_lab};

#[test]
fn probe_finds_what_the_lab_kernel_offers() {
    require_lab();
    let out = Command::new(cli())
        .args(["probe", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["kernel"].as_str().unwrap().starts_with("6.12"));
    assert_eq!(v["udmabuf"]["create"]["available"], true, "{v}");
    assert_eq!(v["udmabuf"]["limits"]["size_limit_mb"], 64);
    assert_eq!(v["udmabuf"]["limits"]["from_sysfs"], true);
    let heaps = v["heaps"].as_array().unwrap();
    assert!(
        heaps
            .iter()
            .any(|h| h["name"] == "system" && h["allocation"]["available"] == true),
        "{v}"
    );
    assert_eq!(v["sync_file"]["available"], true, "{v}");
    assert_eq!(v["fdinfo"]["available"], true, "{v}");
    assert_eq!(
        v["sysfs_stats"]["available"], false,
        "not configured in Debian's 6.12"
    );
    assert!(v["auto_backend"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("heap:system"));
}

#[test]
fn probe_prints_a_readable_table() {
    require_lab();
    let out = Command::new(cli()).arg("probe").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("udmabuf                yes"), "{text}");
    assert!(text.contains("heap system            yes"), "{text}");
    assert!(!text.contains("offers no dma-buf exporter"), "{text}");
}
