//! Parsers of fdinfo, maps and debugfs bufinfo: recorded outputs, mangled
//! ones, and fuzzing.

use dmabuf::inspect::{
    classify_path, parse_bufinfo, parse_fdinfo, parse_maps_line, FdInfo, FileKind,
};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/inspect/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn fdinfo_udmabuf() {
    let info = parse_fdinfo(&fixture("fdinfo-udmabuf.txt"));
    assert_eq!(
        info,
        FdInfo {
            pos: Some(0),
            flags: Some(0o2000002),
            mnt_id: Some(16),
            ino: Some(1042),
            size: Some(4096),
            count: Some(1),
            exp_name: Some("udmabuf".into()),
            name: Some("frames".into()),
        }
    );
    assert!(info.is_dmabuf());
}

#[test]
fn fdinfo_unnamed_heap_buffer() {
    let info = parse_fdinfo(&fixture("fdinfo-heap-unnamed.txt"));
    assert_eq!(info.exp_name.as_deref(), Some("system"));
    assert_eq!(info.size, Some(1 << 20));
    assert_eq!(info.ino, Some(1043));
    assert_eq!(info.count, Some(2));
    assert_eq!(info.name, None);
}

#[test]
fn fdinfo_of_other_files_is_not_a_dmabuf() {
    for name in [
        "fdinfo-regular-file.txt",
        "fdinfo-eventfd.txt",
        "fdinfo-memfd.txt",
    ] {
        let info = parse_fdinfo(&fixture(name));
        assert!(!info.is_dmabuf(), "{name}");
        assert!(info.ino.is_some(), "{name}");
        assert_eq!(info.size, None, "{name}");
    }
    assert_eq!(
        parse_fdinfo(&fixture("fdinfo-memfd.txt")).flags,
        Some(0o100002)
    );
}

#[test]
fn fdinfo_mangled() {
    // Cut in the middle of the exporter's name.
    let cut = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1042\nsize:\t4096\ncount:\t1\nexp_name:\tudma";
    let info = parse_fdinfo(cut);
    assert_eq!(info.exp_name.as_deref(), Some("udma"));
    assert_eq!(info.name, None);
    // Cut before the size.
    let info = parse_fdinfo("pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t10");
    assert_eq!(info.ino, Some(10));
    assert_eq!(info.size, None);
    assert!(!info.is_dmabuf());
    // Garbage numbers and odd spacing.
    let info = parse_fdinfo(
        "pos:\t-1\nflags:\t0999\nmnt_id:\tx\nino:  77\nsize:\t18446744073709551616\ncount:\t-3\nexp_name:\t\nname:\t with space \n",
    );
    assert_eq!(info.pos, Some(-1));
    assert_eq!(info.flags, None);
    assert_eq!(info.mnt_id, None);
    assert_eq!(info.ino, Some(77));
    assert_eq!(info.size, None);
    assert_eq!(info.count, Some(-3));
    assert_eq!(info.exp_name.as_deref(), Some(""));
    assert!(info.is_dmabuf());
    assert_eq!(info.name.as_deref(), Some(" with space "));
    // Repeated keys: the first wins; lines without a colon are skipped.
    let info = parse_fdinfo("ino:\t1\nino:\t2\nno colon here\n:\n");
    assert_eq!(info.ino, Some(1));
    // Nothing at all.
    assert_eq!(parse_fdinfo(""), FdInfo::default());
    // Non-UTF-8 name, read as the scanner reads it.
    let bytes = b"ino:\t5\nexp_name:\tudmabuf\nname:\tcaf\xe9\n";
    let info = parse_fdinfo(&String::from_utf8_lossy(bytes));
    assert_eq!(info.name.as_deref(), Some("caf\u{fffd}"));
}

#[test]
fn maps_recorded() {
    let text = fixture("maps-camera.txt");
    let lines: Vec<_> = text.lines().map(|l| parse_maps_line(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);

    let frames = &lines[6];
    assert_eq!(frames.start, 0x7f1c2a400000);
    assert_eq!(frames.end, 0x7f1c2a401000);
    assert_eq!(frames.len(), 4096);
    assert_eq!(frames.perms, "rw-s");
    assert!(frames.is_shared());
    assert_eq!((frames.dev_major, frames.dev_minor), (0, 0x0d));
    assert_eq!(frames.inode, 1042);
    assert_eq!(frames.path, "/dmabuf:frames");

    let heap = &lines[2];
    assert_eq!(heap.path, "[heap]");
    assert!(!heap.is_shared());
    assert_eq!(lines[11].end, 0xffffffffff601000);

    let tex = &lines[8];
    assert_eq!(tex.offset, 0x100000);
    assert_eq!(tex.path, "/dmabuf:gpu tex 0");

    let found: Vec<_> = lines
        .iter()
        .filter_map(|l| Some((classify_path(&l.path)?, l.inode)))
        .map(|(p, ino)| (p.kind, p.name, ino))
        .collect();
    assert_eq!(
        found,
        vec![
            (FileKind::DmaBuf, None, 1043),
            (FileKind::Portable, Some("scratch".to_string()), 5123),
            (FileKind::DmaBuf, Some("frames".to_string()), 1042),
            (FileKind::DmaBuf, Some("frames".to_string()), 1042),
            (FileKind::DmaBuf, Some("gpu tex 0".to_string()), 1044),
        ]
    );
}

#[test]
fn maps_line_of_the_issue() {
    let line =
        "7f1c2a400000-7f1c2a401000 rw-s 00000000 00:0d 1042                       /dmabuf:frames";
    let m = parse_maps_line(line).unwrap();
    assert_eq!(m.inode, 1042);
    assert_eq!(m.path, "/dmabuf:frames");
    // Anonymous memory has no path.
    let m = parse_maps_line("7f00-8f00 rw-p 00000000 00:00 0 ").unwrap();
    assert_eq!(m.path, "");
    assert_eq!(m.inode, 0);
}

#[test]
fn maps_mangled() {
    for bad in [
        "",
        "   ",
        "7f1c2a400000-7f1c2a401000",
        "7f1c2a400000-7f1c2a401000 rw-s 00000000 00:0d",
        "7f1c2a400000 rw-s 00000000 00:0d 1042 /dmabuf:x",
        "zz-7f1c2a401000 rw-s 00000000 00:0d 1042 /dmabuf:x",
        "7f1c2a401000-7f1c2a400000 rw-s 00000000 00:0d 1042 /dmabuf:x",
        "7f1c2a400000-7f1c2a401000 rw-s 00000000 000d 1042 /dmabuf:x",
        "7f1c2a400000-7f1c2a401000 rw-s 00000000 00:0d -1 /dmabuf:x",
        "7f1c2a400000-7f1c2a401000 rw-s 0000000g 00:0d 1042 /dmabuf:x",
        "1-2-3 rw-s 0 0:0 1 /dmabuf:",
        "ffffffffffffffffff-1 rw-s 0 0:0 1 /dmabuf:",
    ] {
        assert_eq!(parse_maps_line(bad), None, "{bad:?}");
    }
    // Tabs and a trailing newline are fine.
    let m = parse_maps_line("1000-2000\trw-s\t0\t0:d\t9\t/dmabuf:a\n").unwrap();
    assert_eq!((m.inode, m.path.as_str()), (9, "/dmabuf:a"));
}

#[test]
fn bufinfo_full() {
    let entries = parse_bufinfo(&fixture("bufinfo-full.txt"));
    assert_eq!(entries.len(), 3);

    let frames = &entries[0];
    assert_eq!(frames.size, Some(4096));
    assert_eq!(frames.flags, Some(0o2000002));
    assert_eq!(frames.mode, Some(0x4801f));
    assert_eq!(frames.count, Some(3));
    assert_eq!(frames.exp_name.as_deref(), Some("udmabuf"));
    assert_eq!(frames.ino, Some(1042));
    assert_eq!(frames.name.as_deref(), Some("frames"));
    assert_eq!(frames.attached_devices, ["0000:00:02.0", "virtio-gpu"]);
    assert_eq!(frames.fences.len(), 2);
    let write = &frames.fences[0];
    assert_eq!(
        (
            write.usage.as_str(),
            write.driver.as_str(),
            write.timeline.as_str()
        ),
        ("write", "udmabuf-test", "timeline-0")
    );
    assert_eq!(write.seqno, Some(12));
    assert_eq!(write.signalled, Some(false));
    assert_eq!(frames.fences[1].signalled, Some(true));
    assert_eq!(frames.fences[1].timeline, "0000:00:02.0");

    let heap = &entries[1];
    assert_eq!(heap.name, None);
    assert_eq!(heap.exp_name.as_deref(), Some("system"));
    assert!(heap.attached_devices.is_empty());
    assert!(heap.fences.is_empty());

    let tex = &entries[2];
    assert_eq!(tex.name.as_deref(), Some("gpu tex 0"));
    assert_eq!(tex.fences.len(), 2);
    assert_eq!(tex.fences[1].usage, "bookkeep");
    assert_eq!(tex.attached_devices, ["0000:00:02.0"]);
}

#[test]
fn bufinfo_mangled() {
    let full = fixture("bufinfo-full.txt");
    // Every prefix parses, and never yields more than the whole.
    for cut in (0..full.len()).filter(|&i| full.is_char_boundary(i)) {
        let entries = parse_bufinfo(&full[..cut]);
        assert!(entries.len() <= 3);
    }
    // Cut inside the first row: the fields before the cut are kept.
    let entries = parse_bufinfo("\nDma-buf Objects:\n00004096\t00080002\t0004801f\t000");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].size, Some(4096));
    assert_eq!(entries[0].count, Some(0));
    assert_eq!(entries[0].ino, None);
    assert_eq!(entries[0].exp_name, None);
    // Garbage numbers, a fence without a buffer, stray lines.
    let text = "\tread fence:x y seq 1 signalled\n\
                00000010\tzz\tqq\tnn\tvgem\tabc\tname\n\
                \tweird fence line\n\
                \tAttached Devices:\n\
                \tdev0\n\
                \t\n\
                Total 1 devices attached\n\
                \tafter the total\n\
                random text\n";
    let entries = parse_bufinfo(text);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (e.size, e.flags, e.mode, e.count, e.ino),
        (Some(10), None, None, None, None)
    );
    assert_eq!(e.exp_name.as_deref(), Some("vgem"));
    assert_eq!(e.attached_devices, ["dev0"]);
    assert!(e.fences.is_empty());
    // Non-UTF-8 names, read as the scanner reads them.
    let bytes = b"00004096\t00000002\t0000001f\t00000001\tudmabuf\t00000007\tn\xff\n";
    let entries = parse_bufinfo(&String::from_utf8_lossy(bytes));
    assert_eq!(entries[0].name.as_deref(), Some("n\u{fffd}"));
    assert!(parse_bufinfo("").is_empty());
}

/// Lines that look like the kernel's, with random values.
fn fdinfo_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "pos", "flags", "mnt_id", "ino", "size", "count", "exp_name", "name", "lock", "",
    ]);
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| format!("0{n:o}")),
        ".{0,20}",
    ];
    prop::collection::vec((key, value, any::<bool>()), 0..12).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(k, v, tab)| format!("{k}:{}{v}\n", if tab { "\t" } else { " " }))
            .collect()
    })
}

fn maps_like() -> impl Strategy<Value = String> {
    (
        any::<u64>(),
        any::<u64>(),
        "[rwxsp-]{0,5}",
        any::<u32>(),
        "[0-9a-f:]{0,6}",
        any::<u64>(),
        prop_oneof![
            Just("/dmabuf:".to_string()),
            "/dmabuf:.{0,12}",
            "/memfd:dmabuf-portable:.{0,12}( \\(deleted\\))?",
            ".{0,20}",
        ],
    )
        .prop_map(|(s, e, perms, off, dev, ino, path)| {
            format!("{s:x}-{e:x} {perms} {off:08x} {dev} {ino}   {path}")
        })
}

fn bufinfo_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        (any::<u32>(), any::<u32>(), ".{0,8}", any::<u32>(), ".{0,8}").prop_map(
            |(size, flags, exp, ino, name)| format!(
                "{size:08}\t{flags:08x}\t0000001f\t00000001\t{exp}\t{ino:08}\t{name}"
            )
        ),
        "\t(kernel|write|read|bookkeep) fence:.{0,10} seq [0-9]{0,3} (un)?signalled",
        Just("\tAttached Devices:".to_string()),
        "\t.{0,12}",
        "Total [0-9] devices attached",
        ".{0,30}",
    ];
    prop::collection::vec(line, 0..20).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_fdinfo_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_fdinfo(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn fuzz_fdinfo_structured(text in fdinfo_like()) {
        let info = parse_fdinfo(&text);
        prop_assert_eq!(info.is_dmabuf(), info.exp_name.is_some());
    }

    #[test]
    fn fuzz_maps_any_text(text in ".{0,120}") {
        if let Some(m) = parse_maps_line(&text) {
            prop_assert!(m.start <= m.end);
        }
        let _ = classify_path(&text);
    }

    #[test]
    fn fuzz_maps_structured(line in maps_like()) {
        if let Some(m) = parse_maps_line(&line) {
            prop_assert!(m.start <= m.end);
            prop_assert_eq!(m.len(), m.end - m.start);
            let _ = classify_path(&m.path);
        }
    }

    #[test]
    fn maps_roundtrip(start in 0u64..1 << 47, len in 1u64..1 << 30, ino in any::<u64>(), name in "[a-z0-9 _-]{0,16}") {
        let line = format!("{start:x}-{:x} rw-s 00000000 00:0d {ino}                  /dmabuf:{name}", start + len);
        let m = parse_maps_line(&line).unwrap();
        prop_assert_eq!(m.len(), len);
        prop_assert_eq!(m.inode, ino);
        let found = classify_path(&m.path).unwrap();
        prop_assert_eq!(found.kind, FileKind::DmaBuf);
        prop_assert_eq!(found.name, (!name.is_empty()).then_some(name));
    }

    #[test]
    fn fuzz_bufinfo_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_bufinfo(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn fuzz_bufinfo_structured(text in bufinfo_like()) {
        let entries = parse_bufinfo(&text);
        prop_assert!(entries.len() <= text.lines().count());
    }
}
