//! The `tracing` feature's events (the tests build the library with it:
//! see the dev-dependencies): each promise of the crate documentation's
//! "Tracing" section is seen here through a subscriber that records what
//! it gets.
//!
//! The recorder is the process's global subscriber, installed once, and
//! keeps what each thread emits while that thread records: `tracing`
//! caches each callsite's interest for the whole process, so a scoped
//! subscriber (`with_default`) on one test thread loses events whose
//! callsite another thread, with no subscriber, reached first.

use std::cell::RefCell;
use std::fmt::Debug;
use std::sync::Once;
use std::time::Duration;

use dmabuf::endpoint::{Direction, Endpoint, FdEndpoint};
use dmabuf::mapping::ReadOnly;
use dmabuf::{Allocate, Allocator, Portable, Usage, UserFence};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One event: its level, target and fields (`message` included) as text.
#[derive(Debug, Clone)]
struct Seen {
    level: Level,
    target: String,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn message(&self) -> &str {
        self.field("message").unwrap_or("")
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

thread_local! {
    /// What this thread has emitted since it began recording, if it is.
    static SEEN: RefCell<Option<Vec<Seen>>> = const { RefCell::new(None) };
}

/// The global subscriber: every callsite is of interest, and each event
/// goes to its thread's record.
struct Recorder;

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        let seen = Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            fields,
        };
        SEEN.with(|s| {
            if let Some(v) = s.borrow_mut().as_mut() {
                v.push(seen);
            }
        });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Runs `f` recording what this thread emits; what it saw.
fn recorded(f: impl FnOnce()) -> Vec<Seen> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Recorder).expect("no other global subscriber");
    });
    SEEN.with(|s| *s.borrow_mut() = Some(Vec::new()));
    f();
    SEEN.with(|s| s.borrow_mut().take()).unwrap_or_default()
}

fn find<'a>(seen: &'a [Seen], message: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.message() == message).collect()
}

#[test]
fn auto_says_which_backend_and_why() {
    let mut chosen = None;
    let seen = recorded(|| chosen = Some(Allocator::auto()));
    let chosen = chosen.unwrap();
    let ev = find(&seen, "Allocator::auto chose a backend");
    assert_eq!(ev.len(), 1, "{seen:?}");
    assert_eq!(ev[0].level, Level::DEBUG);
    assert_eq!(ev[0].target, "dmabuf::alloc");
    assert_eq!(
        ev[0].field("backend"),
        Some(chosen.backend().to_string().as_str())
    );
    assert_eq!(ev[0].field("why"), Some(chosen.reason()));
}

#[test]
fn windows_opened_and_closed_and_fence_waits_name_the_blocker() {
    let buf = Portable.allocate(4096, "traced").unwrap();
    let writer = UserFence::new().unwrap();
    buf.add_fence(writer.clone().into(), Usage::Write).unwrap();
    let signaller = {
        let w = writer.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            w.signal().unwrap();
        })
    };
    let seen = recorded(|| {
        let map = buf.map().unwrap();
        let w = map
            .window::<ReadOnly>(0..4096, Some(Duration::from_secs(10)))
            .unwrap();
        w.end().unwrap();
    });
    signaller.join().unwrap();

    let wait = find(&seen, "waiting for a fence in the reservation");
    assert_eq!(wait.len(), 1, "{seen:?}");
    assert_eq!(wait[0].target, "dmabuf::reservation");
    assert_eq!(wait[0].field("op"), Some("open CPU window"));
    let blocker = wait[0].field("fence").unwrap();
    assert!(blocker.contains("user fence"), "{blocker}");
    let ended = find(&seen, "fence wait ended");
    assert_eq!(ended.len(), 1, "{seen:?}");
    assert_eq!(ended[0].field("outcome"), Some("Ok(())"));
    let waited: u64 = ended[0].field("waited_us").unwrap().parse().unwrap();
    assert!(
        waited >= 10_000,
        "waited {waited} µs for a fence signalled after 30 ms"
    );

    let opened = find(&seen, "CPU window opened");
    assert_eq!(opened.len(), 1, "{seen:?}");
    assert_eq!(opened[0].level, Level::TRACE);
    assert_eq!(opened[0].target, "dmabuf::mapping");
    assert_eq!(opened[0].field("access"), Some("read"));
    assert_eq!(opened[0].field("range"), Some("0..4096"));
    let closed = find(&seen, "CPU window closed");
    assert_eq!(closed.len(), 1, "{seen:?}");
    assert_eq!(closed[0].field("ok"), Some("true"));
    // In order: the wait, then the window, then its end.
    let pos = |m: &str| seen.iter().position(|s| s.message() == m).unwrap();
    assert!(pos("fence wait ended") < pos("CPU window opened"));
    assert!(pos("CPU window opened") < pos("CPU window closed"));
}

#[test]
fn a_window_that_waits_for_nothing_says_so_too() {
    let buf = Portable.allocate(4096, "idle").unwrap();
    let seen = recorded(|| {
        buf.map().unwrap().read().unwrap().end().unwrap();
    });
    assert!(find(&seen, "waiting for a fence in the reservation").is_empty());
    assert_eq!(find(&seen, "CPU window opened").len(), 1, "{seen:?}");
    assert_eq!(find(&seen, "CPU window closed").len(), 1, "{seen:?}");
}

#[test]
fn an_endpoint_says_which_data_path_it_chose() {
    let (a, _b) = rustix::pipe::pipe().unwrap();
    let mut ep = FdEndpoint::new(a, Direction::FromDevice).unwrap();
    let buf = Portable.allocate(4096, "dst").unwrap();
    let seen = recorded(|| {
        ep.attach(&buf).unwrap();
    });
    let ev = find(&seen, "endpoint chose a data path");
    assert_eq!(ev.len(), 1, "{seen:?}");
    assert_eq!(ev[0].target, "dmabuf::endpoint::fd");
    assert_eq!(ev[0].field("path"), Some("copy (plain file descriptor)"));
    assert!(ev[0].field("buffer").unwrap().contains("dst"), "{ev:?}");
}

#[test]
fn a_device_transfer_says_it_waits_for_open_windows() {
    let (a, _b) = rustix::pipe::pipe().unwrap();
    let mut ep = FdEndpoint::new(a, Direction::FromDevice).unwrap();
    let buf = Portable.allocate(4096, "busy").unwrap();
    let att = ep.attach(&buf).unwrap();
    let map = buf.map().unwrap();
    let window = map.write().unwrap();
    let seen = recorded(|| {
        let e = ep
            .transfer(
                &att,
                4096,
                dmabuf::endpoint::TransferOptions {
                    timeout: Duration::from_millis(20),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), dmabuf::ErrorKind::Busy, "{e}");
    });
    drop(window);
    let ev = find(&seen, "device access waits for open CPU windows");
    assert_eq!(ev.len(), 1, "{seen:?}");
    assert_eq!(ev[0].target, "dmabuf::reservation");
    assert_eq!(ev[0].field("cpu_writers"), Some("1"));
    assert_eq!(ev[0].field("op"), Some("transfer"));
}
