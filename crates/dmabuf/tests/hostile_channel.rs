//! `Channel` against a hostile peer speaking the wire format with raw
//! `sendmsg`: every refusal named, no crash, no hang, fds back to baseline,
//! the channel still usable after a refused message, and what a peer can
//! make us hold bounded.
//!
//! Every test holds `LOCK` (fd counts, and the fd-limit test).

mod hostile_peer;

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use dmabuf::share::{Channel, Message, MAX_PENDING_FENCES};
use dmabuf::{Errno, ErrorKind, FenceStatus};
use hostile_peer::*;
use rustix::fs::SealFlags;

#[test]
fn an_empty_datagram_is_a_protocol_error_not_a_departure() {
    let _g = lock();
    let (ch, raw) = pair();
    refused_then_ok(&ch, &raw, &[], &[], "empty message (0 bytes)");
    // A real departure is still told apart.
    drop(raw);
    let e = ch.recv(T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
}

#[test]
fn fds_of_the_wrong_kind_are_refused_by_kind_before_any_ioctl() {
    let _g = lock();
    let base = open_fds();
    {
        let (ch, raw) = pair();
        let fake = FakeFence::pending();
        let (pr, pw) = rustix::pipe::pipe().unwrap();
        let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let sealed = memfd(4096, SealFlags::SHRINK | SealFlags::GROW);
        let sync = msg(T_FENCE, &fence_body(1, &[1]), 1);
        // An eventfd, a pipe, a memfd and a socket announced as sync files:
        // each named by what it is.
        refused_then_ok(
            &ch,
            &raw,
            &sync,
            &[ev.as_fd()],
            "it is 'anon_inode:[eventfd]'",
        );
        let e = refused_then_ok(&ch, &raw, &sync, &[pr.as_fd()], "it is 'pipe:");
        // The check's errno is kept, and named once.
        assert_eq!(e.matches("(EINVAL)").count(), 1, "{e}");
        refused_then_ok(&ch, &raw, &sync, &[sealed.as_fd()], "it is '/memfd:hostile");
        refused_then_ok(&ch, &raw, &sync, &[raw.fd.as_fd()], "it is 'socket:");
        // A user fence whose fds are swapped, or are the wrong things.
        let user = msg(T_FENCE, &fence_body(1, &[2]), 2);
        refused_then_ok(
            &ch,
            &raw,
            &user,
            &[fake.wake.as_fd(), fake.state.as_fd()],
            "state fd is not a memfd",
        );
        refused_then_ok(
            &ch,
            &raw,
            &user,
            &[fake.state.as_fd(), pw.as_fd()],
            "wake fd is not the read end of a pipe (it is 'pipe:",
        );
        refused_then_ok(
            &ch,
            &raw,
            &user,
            &[fake.state.as_fd(), ev.as_fd()],
            "wake fd is not the read end of a pipe (it is 'anon_inode:[eventfd]')",
        );
        refused_then_ok(
            &ch,
            &raw,
            &user,
            &[sealed.as_fd(), fake.wake.as_fd()],
            "bad magic",
        );
        // A buffer that is a pipe, a fence page, an eventfd.
        let buf = msg(T_BUFFER, &buffer_body(0, 4096, 1, "b"), 1);
        refused_then_ok(&ch, &raw, &buf, &[pr.as_fd()], "not a memfd");
        refused_then_ok(&ch, &raw, &buf, &[ev.as_fd()], "not a memfd");
    }
    assert_eq!(open_fds(), base);
}

#[test]
fn wrong_fd_counts_and_truncated_messages_are_refused() {
    let _g = lock();
    let (ch, raw) = pair();
    let fake = FakeFence::pending();
    let full = msg(T_FENCE, &fence_body(1, &[2, 2]), 4);
    let fds = [
        fake.state.as_fd(),
        fake.wake.as_fd(),
        fake.state.as_fd(),
        fake.wake.as_fd(),
    ];
    refused_then_ok(
        &ch,
        &raw,
        &full,
        &fds[..3],
        "header announces 4 fds but 3 arrived",
    );
    refused_then_ok(
        &ch,
        &raw,
        &full,
        &[],
        "header announces 4 fds but 0 arrived",
    );
    let many: Vec<BorrowedFd<'_>> = (0..40).map(|_| fake.wake.as_fd()).collect();
    refused_then_ok(
        &ch,
        &raw,
        &msg(T_BYE, &[], 0),
        &many,
        "more fds were attached",
    );
    for cut in [1, 8, 15, 16, full.len() - 1] {
        refused_then_ok(&ch, &raw, &full[..cut], &fds, "");
    }
    let mut lying = msg(T_ITEM, &item_body(0, 1, 1, &[]), 0);
    lying.truncate(lying.len() - 3);
    refused_then_ok(
        &ch,
        &raw,
        &lying,
        &[],
        "announces a 33-byte body but 30 bytes followed",
    );
}

#[test]
fn unsealed_resized_and_write_only_memfds_are_refused_at_receipt() {
    let _g = lock();
    let (ch, raw) = pair();
    let unsealed = memfd(4096, SealFlags::empty());
    let grown = memfd(8192, SealFlags::SHRINK | SealFlags::GROW);
    let sealed = memfd(4096, SealFlags::SHRINK | SealFlags::GROW);
    let buf = msg(T_BUFFER, &buffer_body(0, 4096, 1, "b"), 1);
    refused_then_ok(
        &ch,
        &raw,
        &buf,
        &[unsealed.as_fd()],
        "lacks F_SEAL_SHRINK and F_SEAL_GROW",
    );
    refused_then_ok(
        &ch,
        &raw,
        &buf,
        &[grown.as_fd()],
        "announces 4096 bytes but the fd has 8192",
    );
    // The same sealed memfd, reopened write-only.
    let path = format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        sealed.as_raw_fd()
    });
    let wronly = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    refused_then_ok(&ch, &raw, &buf, &[wronly.as_fd()], "write-only (O_WRONLY)");
    // Unsealed after sending is impossible (seals only grow); sealed ones
    // arrive fine.
    raw.send(&buf, &[sealed.as_fd()]).unwrap();
    let Message::Buffer { buffer, .. } = ch.recv(T).unwrap() else {
        panic!("not a buffer")
    };
    // The sender trying to shrink or grow it afterwards: the seals refuse
    // (no SIGBUS for the receiver's mappings).
    assert_eq!(rustix::fs::ftruncate(&sealed, 0), Err(Errno::PERM));
    assert_eq!(rustix::fs::ftruncate(&sealed, 1 << 20), Err(Errno::PERM));
    assert_eq!(buffer.size(), 4096);
}

#[test]
fn a_flood_of_pending_fences_is_bounded() {
    let _g = lock();
    let base = open_fds();
    let (ch, raw) = pair();
    let fake = FakeFence::pending();
    let one = msg(T_FENCE, &fence_body(1, &[2]), 2);
    // 3000 pending fences, dropped by the receiver as they come: nothing
    // is kept (each import holds 2 fds and a mapping).
    for _ in 0..3000 {
        raw.send(&one, &fake.fds()).unwrap();
        let Message::Fence { fence, .. } = ch.recv(T).unwrap() else {
            panic!()
        };
        assert_eq!(fence.status(), FenceStatus::Active);
    }
    assert_eq!(ch.pending_fences(), 0);
    assert!(
        open_fds() <= base + 8,
        "{} fds open, {base} before",
        open_fds()
    );
    // Kept by the receiver: refused past the bound, with the bound named.
    let mut kept = Vec::new();
    let e = loop {
        raw.send(&one, &fake.fds()).unwrap();
        match ch.recv(T) {
            Ok(Message::Fence { fence, .. }) => kept.push(fence),
            Ok(m) => panic!("{m:?}"),
            Err(e) => break e,
        }
        assert!(kept.len() <= MAX_PENDING_FENCES, "no bound");
    };
    assert_eq!(kept.len(), MAX_PENDING_FENCES);
    assert_err(&e, ErrorKind::Protocol, "MAX_PENDING_FENCES");
    // Signalled fences no longer count.
    fake.set_state(SIGNALLED);
    raw.send(&one, &fake.fds()).unwrap();
    assert!(ch.recv(T).is_ok());
    drop(kept);
    drop((ch, raw, fake));
    assert_eq!(open_fds(), base);
}

#[test]
fn out_of_fds_is_named_emfile_not_blamed_on_the_message() {
    let _g = lock();
    let base = open_fds();
    let (ch, raw) = pair();
    let fake = FakeFence::pending();
    let (soft, hard) = {
        let r = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        (r.current, r.maximum)
    };
    let now = open_fds() as u64;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(now + 1),
            maximum: hard,
        },
    )
    .unwrap();
    // Fill the table so that not even one more fd fits.
    let mut filler = Vec::new();
    while let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(raw.fd.as_fd(), 0) {
        filler.push(fd);
    }
    raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2), &fake.fds())
        .unwrap();
    let e = ch.recv(T);
    drop(filler);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: soft,
            maximum: hard,
        },
    )
    .unwrap();
    let e = e.unwrap_err();
    assert_eq!(e.errno(), Some(Errno::MFILE), "{e}");
    assert!(e.to_string().contains("too many open files"), "{e}");
    assert!(!e.to_string().contains("more fds were attached"), "{e}");
    drop((ch, raw, fake));
    assert_eq!(open_fds(), base);
}

#[test]
fn a_peer_that_never_reads_makes_sends_time_out() {
    let _g = lock();
    let (ch, _raw) = pair();
    ch.set_send_timeout(Some(Duration::from_millis(200)));
    let t0 = Instant::now();
    let e = bounded(Duration::from_secs(10), move || loop {
        if let Err(e) = ch.send(&Message::Bye) {
            break e;
        }
    });
    within(t0, Duration::from_secs(5));
    assert_err(
        &e,
        ErrorKind::TimedOut,
        "has not read its messages for 200ms",
    );
    assert_eq!(e.errno(), Some(Errno::TIMEDOUT));
}

#[test]
fn a_peer_dying_after_sending_fences_fails_them_here_only() {
    let _g = lock();
    let base = open_fds();
    {
        let (ch, raw) = pair();
        let fake = FakeFence::pending();
        raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2), &fake.fds())
            .unwrap();
        let Message::Fence { fence, .. } = ch.recv(T).unwrap() else {
            panic!()
        };
        // Half a message, then gone.
        raw.send(&msg(T_FENCE, &fence_body(1, &[2]), 2)[..10], &[])
            .unwrap();
        let state = fake.state.try_clone().unwrap();
        drop(raw);
        assert_eq!(ch.recv(T).unwrap_err().kind(), ErrorKind::Protocol);
        let e = ch.recv(T).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PeerGone, "{e}");
        assert_eq!(fence.status(), FenceStatus::Error(Errno::CONNRESET));
        // The page itself still says pending: the decision stayed here.
        let mut w = [0u8; 8];
        rustix::io::pread(&state, &mut w, 8).unwrap();
        assert_eq!(u64::from_le_bytes(w), PENDING);
    }
    assert_eq!(open_fds(), base);
}

const ROLE: &str = "DMABUF_HOSTILE_CHANNEL_CONNECT";

/// Not a test of its own: the body of the child process below (connects
/// to the socket named in the environment, prints the result).
#[test]
fn connect_helper() {
    let Ok(path) = std::env::var(ROLE) else {
        return;
    };
    match Channel::connect(&path) {
        Ok(ch) => {
            println!("HELPER connected");
            let _ = ch.recv(Some(Duration::from_secs(5)));
        }
        Err(e) => println!("HELPER refused {:?}", e.errno()),
    }
}

#[test]
fn listeners_admit_only_their_own_user() {
    use std::os::unix::fs::PermissionsExt;
    let _g = lock();
    let path = std::env::temp_dir().join(format!("dmabuf-hostile-{}.sock", std::process::id()));
    let l = dmabuf::share::Listener::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let me = Channel::connect(&path).unwrap();
    let peer = l.accept(T).unwrap();
    let c = peer.peer_credentials().unwrap();
    assert_eq!(c.pid, std::process::id());
    assert_eq!(c.uid, rustix::process::geteuid().as_raw());
    drop((me, peer));
    if !rustix::process::geteuid().is_root() {
        // Another user cannot be played without root: the mode check
        // above is what holds then.
        println!("not root: the other-user half of this test needs root");
        return;
    }
    // The other user runs a copy of this test binary that it can reach:
    // the checkout may sit under a directory only its owner can enter
    // (`mktemp -d` makes mode 0700 ones).
    let exe_dir = std::env::temp_dir().join(format!("dmabuf-hostile-{}.bin", std::process::id()));
    std::fs::create_dir_all(&exe_dir).unwrap();
    std::fs::set_permissions(&exe_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = exe_dir.join("hostile_channel");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let other = |path: &std::path::Path| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "connect_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, path)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The mode keeps another user out of the socket file.
    let out = other(&path).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HELPER refused"), "{text}");
    // Opened up by hand, the peer's uid is still checked at accept.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let child = other(&path);
    let e = l.accept(T).unwrap_err();
    assert_err(&e, ErrorKind::PermissionDenied, "runs as uid 65534");
    assert_eq!(e.errno(), Some(Errno::ACCESS));
    child.wait_with_output().unwrap();
    std::fs::remove_dir_all(&exe_dir).unwrap();
}
