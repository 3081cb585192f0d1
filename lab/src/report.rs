//! Reading what the VM prints: the `/init` markers and libtest's result lines,
//! into one verdict.

/// Prefix of the markers the VM's `/init` prints.
pub const MARK: &str = "@@LAB ";

/// Removes terminal escape sequences (SeaBIOS clears the screen) and other
/// control characters from a line of serial output.
pub fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI: parameters, then one final byte in @..~. Two-character
            // sequences such as ESC c (reset) just lose their second character.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// libtest's counts for one `test result:` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests libtest reported as ignored.
    pub ignored: u64,
    /// Tests not selected by the filter.
    pub filtered: u64,
}

/// Parses libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured;
/// 2 filtered out; finished in 0.01s` (also found in the middle of a line).
pub fn parse_test_result(line: &str) -> Option<Counts> {
    let rest = &line[line.find("test result: ")? + "test result: ".len()..];
    let (_verdict, rest) = rest.split_once(". ")?;
    let mut c = Counts::default();
    let mut any = false;
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => c.passed = n,
            "failed" => c.failed = n,
            "ignored" => c.ignored = n,
            "filtered" => c.filtered = n,
            _ => continue,
        }
        any = true;
    }
    any.then_some(c)
}

/// One guest program run by `/init`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Binary {
    /// Its name (the test target's name).
    pub name: String,
    /// Its exit status, once `/init` reported it.
    pub rc: Option<i32>,
    /// libtest's counts, summed over its `test result:` lines.
    pub counts: Option<Counts>,
}

impl Binary {
    /// Whether it ran to the end with status 0 and libtest reported no failure.
    pub fn ok(&self) -> bool {
        self.rc == Some(0) && self.counts.is_some_and(|c| c.failed == 0)
    }
}

/// Everything learnt from the guest's output.
#[derive(Debug, Default)]
pub struct Report {
    /// Programs in the order they started.
    pub binaries: Vec<Binary>,
    /// `uname -r` reported by `/init` once userspace was up.
    pub kernel: Option<String>,
    /// Guest uptime (seconds) when `/init` started, as it reported.
    pub uptime_at_init: Option<f64>,
    /// Whether `/init` reported that it ran everything.
    pub done: bool,
}

/// What a line turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A marker from `/init`, to be shown differently or hidden.
    Marker,
    /// Anything else (program output).
    Output,
}

impl Report {
    /// Takes one line of guest output.
    pub fn feed(&mut self, line: &str) -> Line {
        if let Some(i) = line.find(MARK) {
            let words: Vec<&str> = line[i + MARK.len()..].split_whitespace().collect();
            match words.as_slice() {
                ["UP", kernel, uptime, ..] => {
                    self.kernel = Some((*kernel).to_string());
                    self.uptime_at_init = uptime.parse().ok();
                }
                ["BEGIN", name, ..] => self.binaries.push(Binary {
                    name: (*name).to_string(),
                    ..Binary::default()
                }),
                ["END", name, rc, ..] => {
                    let rc = rc.strip_prefix("rc=").and_then(|r| r.parse().ok());
                    if let Some(b) = self.binaries.iter_mut().rev().find(|b| b.name == *name) {
                        b.rc = rc.or(Some(-1));
                    }
                }
                ["DONE", ..] => self.done = true,
                _ => return Line::Output,
            }
            return Line::Marker;
        }
        if let Some(c) = parse_test_result(line) {
            if let Some(b) = self.binaries.last_mut().filter(|b| b.rc.is_none()) {
                let t = b.counts.get_or_insert_with(Counts::default);
                t.passed += c.passed;
                t.failed += c.failed;
                t.ignored += c.ignored;
                t.filtered += c.filtered;
            }
        }
        Line::Output
    }

    /// Totals: libtest's passed and failed counts, where every binary that
    /// crashed, exited non-zero without a failed test, or never finished counts
    /// as one more failure, and so does a VM that never reported it was done.
    pub fn totals(&self) -> (u64, u64, Vec<String>) {
        let (mut passed, mut failed) = (0, 0);
        let mut problems = vec![];
        for b in &self.binaries {
            let c = b.counts.unwrap_or_default();
            passed += c.passed;
            failed += c.failed;
            match (b.rc, b.counts) {
                (None, _) => {
                    problems.push(format!("{} never finished (VM died or timed out)", b.name))
                }
                (Some(rc), None) => problems.push(format!(
                    "{} exited with status {rc} without a libtest result (crashed?)",
                    b.name
                )),
                (Some(rc), Some(c)) if rc != 0 && c.failed == 0 => problems.push(format!(
                    "{} exited with status {rc} although no test failed",
                    b.name
                )),
                _ => {}
            }
        }
        if !self.done && self.binaries.iter().all(|b| b.rc.is_some()) {
            problems.push("the VM never reported that all tests ran".into());
        }
        failed += problems.len() as u64;
        (passed, failed, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_escapes() {
        assert_eq!(
            sanitize("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1)"),
            "SeaBIOS (version 1)"
        );
        assert_eq!(sanitize("a\tb\x07c"), "a\tbc");
    }

    #[test]
    fn parses_libtest_lines() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s"
            ),
            Some(Counts { passed: 3, failed: 0, ignored: 1, filtered: 2 })
        );
        assert_eq!(
            parse_test_result("\x1b[0mtest result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"),
            Some(Counts { passed: 1, failed: 2, ignored: 0, filtered: 0 })
        );
        assert_eq!(parse_test_result("test foo ... ok"), None);
        assert_eq!(parse_test_result("test result: garbage"), None);
    }

    fn feed(lines: &str) -> Report {
        let mut r = Report::default();
        for l in lines.lines() {
            r.feed(l);
        }
        r
    }

    #[test]
    fn all_good() {
        let r = feed(
            "@@LAB UP 6.12.95+deb12-amd64 1.23\n\
             @@LAB BEGIN a\nrunning 2 tests\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
             @@LAB END a rc=0\n\
             @@LAB BEGIN b\n\
             test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
             @@LAB END b rc=0\n@@LAB DONE\n",
        );
        assert_eq!(r.kernel.as_deref(), Some("6.12.95+deb12-amd64"));
        assert_eq!(r.uptime_at_init, Some(1.23));
        assert!(r.done && r.binaries.iter().all(Binary::ok));
        assert_eq!(r.totals(), (2, 0, vec![]));
    }

    #[test]
    fn failures_and_crashes_count() {
        let r = feed(
            "@@LAB BEGIN a\n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             @@LAB END a rc=101\n\
             @@LAB BEGIN b\nSegmentation fault\n@@LAB END b rc=139\n\
             partial output@@LAB BEGIN c\n",
        );
        let (passed, failed, problems) = r.totals();
        assert_eq!((passed, failed), (1, 3));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("b exited with status 139"));
        assert!(problems[1].starts_with("c never finished"));
    }

    #[test]
    fn silent_vm_is_a_failure() {
        let (passed, failed, problems) = Report::default().totals();
        assert_eq!((passed, failed), (0, 1));
        assert!(problems[0].contains("never reported"));
    }
}
