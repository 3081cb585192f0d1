//! Text rendering of snapshots and changes for people (`dmabuf ls`).

use std::fmt::Write as _;

use super::snapshot::{
    BufferEntry, Changes, Holder, SizeSource, Snapshot, SourceState, UnreadableReason,
};

pub use crate::units::human_size;

/// A signed size difference for people: `+4.0 KiB`, `-1.0 MiB`, `0 B`.
pub fn human_delta(before: u64, after: u64) -> String {
    if after >= before {
        format!("+{}", human_size(after - before))
    } else {
        format!("-{}", human_size(before - after))
    }
}

/// Replaces control characters (a name may hold anything) so that one
/// value stays on one line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn size_cell(buffer: &BufferEntry) -> String {
    match buffer.size_source {
        SizeSource::Unknown => "?".to_string(),
        SizeSource::MappingExtent => format!(">={}", human_size(buffer.size)),
        _ => human_size(buffer.size),
    }
}

fn holder_text(h: &Holder) -> String {
    let mut how = Vec::new();
    if !h.fds.is_empty() {
        let fds: Vec<String> = h.fds.iter().map(i32::to_string).collect();
        how.push(format!("fd {}", fds.join(",")));
    }
    if h.is_mapped() {
        let times = if h.mappings > 1 {
            format!(" in {} mappings", h.mappings)
        } else {
            String::new()
        };
        how.push(format!("mapped {}{times}", human_size(h.mapped_bytes)));
    }
    format!("{} {} ({})", h.pid, clean(&h.command), how.join(", "))
}

fn holders_cell(buffer: &BufferEntry) -> String {
    if buffer.holders.is_empty() {
        return "-".to_string();
    }
    let holders: Vec<String> = buffer.holders.iter().map(holder_text).collect();
    holders.join("; ")
}

/// Lays out rows in columns; `right[i]` right-aligns column i. The last
/// column is not padded.
fn table(out: &mut String, header: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let last = i + 1 == row.len();
            let pad = widths[i].saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn buffer_row(b: &BufferEntry) -> Vec<String> {
    vec![
        b.inode.to_string(),
        size_cell(b),
        clean(b.exporter.as_deref().unwrap_or("?")),
        clean(b.name.as_deref().unwrap_or("-")),
        holders_cell(b),
    ]
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The `dmabuf ls` report: buffers, processes, totals, unreadable
/// processes and unusable sources.
pub fn render_snapshot(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    if snapshot.buffers.is_empty() {
        out.push_str("No dma-bufs or portable buffers found.\n");
    } else {
        let rows: Vec<Vec<String>> = snapshot.buffers.iter().map(buffer_row).collect();
        // Render row by row so the details of a buffer follow it.
        let mut lines = String::new();
        table(
            &mut lines,
            &["INODE", "SIZE", "EXPORTER", "NAME", "HOLDERS"],
            &[true, true, false, false, false],
            &rows,
        );
        let mut lines = lines.lines();
        if let Some(header) = lines.next() {
            out.push_str(header);
            out.push('\n');
        }
        for (line, buffer) in lines.zip(&snapshot.buffers) {
            out.push_str(line);
            out.push('\n');
            if !buffer.attached_devices.is_empty() {
                let devices: Vec<String> =
                    buffer.attached_devices.iter().map(|d| clean(d)).collect();
                let _ = writeln!(out, "        attached: {}", devices.join(", "));
            }
            for f in &buffer.fences {
                let state = match f.signalled {
                    Some(true) => "signalled",
                    Some(false) => "unsignalled",
                    None => "?",
                };
                let seq = f.seqno.map_or("?".to_string(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "        {} fence: {} {} seq {seq} {state}",
                    clean(&f.usage),
                    clean(&f.driver),
                    clean(&f.timeline)
                );
            }
        }
    }

    if !snapshot.processes.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = snapshot
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.pid.to_string(),
                    clean(&p.command),
                    p.buffers.to_string(),
                    p.fds.to_string(),
                    human_size(p.fd_size),
                    human_size(p.mapped_bytes),
                    human_size(p.rss),
                    human_size(p.pss),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "PID", "COMMAND", "BUFFERS", "FDS", "BY-FD", "MAPPED", "RSS", "PSS",
            ],
            &[true, false, true, true, true, true, true, true],
            &rows,
        );
    }

    let t = &snapshot.totals;
    let _ = write!(
        out,
        "\nTotal: {}, {}, held by {}",
        plural(t.buffers, "buffer", "buffers"),
        human_size(t.size),
        plural(t.processes, "process", "processes"),
    );
    if t.unheld_buffers > 0 {
        let _ = write!(
            out,
            " ({}, {}, with no visible holder)",
            plural(t.unheld_buffers, "buffer", "buffers"),
            human_size(t.unheld_size)
        );
    }
    out.push('\n');

    if !snapshot.unreadable.is_empty() {
        let n = snapshot.unreadable.len();
        let mut why = Vec::new();
        for (reason, one, many) in [
            (
                UnreadableReason::PermissionDenied,
                "permission denied",
                "permission denied",
            ),
            (
                UnreadableReason::Exited,
                "exited during the scan",
                "exited during the scan",
            ),
            (UnreadableReason::Other, "other error", "other errors"),
        ] {
            let count = snapshot.unreadable_count(reason);
            if count > 0 {
                why.push(plural(count, one, many));
            }
        }
        // Root could read them; as root, the hint would not help.
        let hint = if !snapshot.sources.as_root
            && snapshot.unreadable_count(UnreadableReason::PermissionDenied) > 0
        {
            "; run as root to read them"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{} could not be read ({}){hint}",
            plural(n, "process", "processes"),
            why.join(", ")
        );
    }
    for (state, what) in [
        (&snapshot.sources.sysfs_stats, "sysfs buffer statistics"),
        (
            &snapshot.sources.debugfs_bufinfo,
            "debugfs bufinfo (attached devices, fences)",
        ),
    ] {
        if let SourceState::Unreadable(message) = state {
            let hint = if !snapshot.sources.as_root && message.contains("EACCES") {
                "; run as root to read it"
            } else {
                ""
            };
            let _ = writeln!(out, "Not shown: {what}: {message}{hint}");
        }
    }
    out
}

/// What changed since the last look, for `dmabuf ls --watch`.
pub fn render_changes(changes: &Changes) -> String {
    let mut out = String::new();
    if changes.is_empty() {
        out.push_str("No change since the last look.\n");
        return out;
    }
    out.push_str("Changes since the last look:\n");
    let describe = |b: &BufferEntry| {
        format!(
            "{} {} {} {} held by {}",
            b.inode,
            size_cell(b),
            clean(b.exporter.as_deref().unwrap_or("?")),
            clean(b.name.as_deref().unwrap_or("-")),
            holders_cell(b)
        )
    };
    for b in &changes.appeared {
        let _ = writeln!(out, "  + appeared  {}", describe(b));
    }
    for b in &changes.disappeared {
        let _ = writeln!(out, "  - gone      {}", describe(b));
    }
    for r in &changes.resized {
        let _ = writeln!(
            out,
            "  ~ resized   {} {} {}: {} -> {} ({})",
            r.inode,
            clean(r.exporter.as_deref().unwrap_or("?")),
            clean(r.name.as_deref().unwrap_or("-")),
            human_size(r.size_before),
            human_size(r.size_after),
            human_delta(r.size_before, r.size_after)
        );
    }
    for p in &changes.processes {
        let _ = writeln!(
            out,
            "  process {} {}: {} -> {} buffers, RSS {} -> {}, PSS {} -> {} ({})",
            p.pid,
            clean(&p.command),
            p.buffers_before,
            p.buffers_after,
            human_size(p.rss_before),
            human_size(p.rss_after),
            human_size(p.pss_before),
            human_size(p.pss_after),
            human_delta(p.pss_before, p.pss_after)
        );
    }
    let _ = writeln!(
        out,
        "  total: {} -> {} buffers, {} -> {} ({})",
        changes.buffers_before,
        changes.buffers_after,
        human_size(changes.size_before),
        human_size(changes.size_after),
        human_delta(changes.size_before, changes.size_after)
    );
    out
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a
/// line break, quotes doubled. Any text stays one field.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(out: &mut String, fields: &[String]) {
    let fields: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&fields.join(","));
    out.push_str("\r\n");
}

/// The header of [`csv_buffers`].
pub const CSV_BUFFERS_HEADER: &str =
    "kind,inode,size,size_source,exporter,name,holders,holder_pids,fds,mapped_bytes";

/// The header of [`csv_processes`].
pub const CSV_PROCESSES_HEADER: &str =
    "pid,command,buffers,fds,mapped_buffers,fd_size,mapped_size,mapped_bytes,rss,pss";

/// The buffers as CSV (RFC 4180, CRLF line ends, a header line first):
/// one row per buffer, sizes in bytes. `holder_pids` lists the holders'
/// pids separated by spaces; `fds` counts the fds of all holders;
/// `mapped_bytes` sums the holders' mapped bytes. Empty fields: unknown
/// exporter, no name.
pub fn csv_buffers(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    out.push_str(CSV_BUFFERS_HEADER);
    out.push_str("\r\n");
    for b in &snapshot.buffers {
        let kind = match b.kind {
            crate::procfs::FileKind::DmaBuf => "dmabuf",
            crate::procfs::FileKind::Portable => "portable",
        };
        // The names of the JSON output.
        let source = match b.size_source {
            SizeSource::Fdinfo => "fdinfo",
            SizeSource::Sysfs => "sysfs",
            SizeSource::Debugfs => "debugfs",
            SizeSource::Stat => "stat",
            SizeSource::MappingExtent => "mapping_extent",
            SizeSource::Unknown => "unknown",
        };
        let pids: Vec<String> = b.holders.iter().map(|h| h.pid.to_string()).collect();
        let fds: usize = b.holders.iter().map(|h| h.fds.len()).sum();
        let mapped = b
            .holders
            .iter()
            .map(|h| h.mapped_bytes)
            .fold(0, u64::saturating_add);
        csv_line(
            &mut out,
            &[
                kind.to_string(),
                b.inode.to_string(),
                b.size.to_string(),
                source.to_string(),
                b.exporter.clone().unwrap_or_default(),
                b.name.clone().unwrap_or_default(),
                b.holders.len().to_string(),
                pids.join(" "),
                fds.to_string(),
                mapped.to_string(),
            ],
        );
    }
    out
}

/// The processes as CSV (RFC 4180, CRLF line ends, a header line first):
/// one row per process holding a buffer, the fields of
/// [`ProcessUsage`](super::ProcessUsage), sizes in bytes.
pub fn csv_processes(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    out.push_str(CSV_PROCESSES_HEADER);
    out.push_str("\r\n");
    for p in &snapshot.processes {
        csv_line(
            &mut out,
            &[
                p.pid.to_string(),
                p.command.clone(),
                p.buffers.to_string(),
                p.fds.to_string(),
                p.mapped_buffers.to_string(),
                p.fd_size.to_string(),
                p.mapped_size.to_string(),
                p.mapped_bytes.to_string(),
                p.rss.to_string(),
                p.pss.to_string(),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
        assert_eq!(human_size(u64::MAX), "16777216.0 TiB");
        assert_eq!(human_delta(4096, 0), "-4.0 KiB");
        assert_eq!(human_delta(0, 4096), "+4.0 KiB");
    }

    #[test]
    fn csv_fields_stay_one_field() {
        assert_eq!(csv_field("cam-0"), "cam-0");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn clean_control_characters() {
        assert_eq!(clean("a\nb\tc"), "a?b?c");
    }
}
