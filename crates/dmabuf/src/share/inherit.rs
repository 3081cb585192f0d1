//! A channel to a child process, with no `unsafe` in the caller's code.
//!
//! [`Channel::spawn_with_channel`] makes a connected pair, spawns a command
//! whose child inherits one end (kept open across `exec` in that child
//! only, so children that other threads spawn at the same time do not get
//! it) and names it in the environment variable [`CHANNEL_FD_ENV`]. In the
//! child, [`Channel::from_parent`] claims it: once per process, after
//! checking that it is an open Unix seqpacket socket.

use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command};

use super::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The environment variable through which a child learns the number of the
/// channel fd it inherited.
pub const CHANNEL_FD_ENV: &str = "DMABUF_CHANNEL_FD";

impl Channel {
    /// Spawns `cmd` with the other end of a new channel, and returns this
    /// end and the child. The child finds its end with
    /// [`Channel::from_parent`]. Each call adds one inherited fd to `cmd`:
    /// use a fresh `Command` per child.
    pub fn spawn_with_channel(cmd: &mut Command) -> Result<(Channel, Child)> {
        let (mine, theirs) = Channel::pair()?;
        let fd = theirs.fd.as_fd();
        sys::inherit::keep_open_in_child(cmd, fd);
        cmd.env(CHANNEL_FD_ENV, fd.as_raw_fd().to_string());
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("spawn with channel", program, e))?;
        // The child has its copy; the parent's is closed here.
        drop(theirs);
        Ok((mine, child))
    }

    /// In a child spawned by [`Channel::spawn_with_channel`]: the channel
    /// to the parent. Refused, with the cause named, when the variable is
    /// missing or malformed, when the fd is not open or not a Unix
    /// seqpacket socket, or when this process claimed it already.
    pub fn from_parent() -> Result<Channel> {
        let op = "channel from parent";
        let value = std::env::var(CHANNEL_FD_ENV).map_err(|_| {
            Error::new(
                ErrorKind::NotFound,
                op,
                CHANNEL_FD_ENV,
                "not set: this process was not spawned with a channel",
            )
        })?;
        let raw: i32 = value.trim().parse().map_err(|_| {
            Error::invalid(op, CHANNEL_FD_ENV, format!("'{value}' is not an fd number"))
        })?;
        let obj = format!("inherited fd {raw} ({CHANNEL_FD_ENV})");
        let fd = sys::inherit::claim_inherited(raw).map_err(|e| match e {
            sys::Errno::BUSY => Error::new(
                ErrorKind::Busy,
                op,
                obj.clone(),
                "already claimed by this process",
            )
            .with_errno(e),
            e => Error::kernel(op, obj.clone(), e, "not an open fd this process may own"),
        })?;
        Channel::from_fd(fd)
    }
}

impl AsFd for Channel {
    /// The socket, for event loops (poll it for `POLLIN`; receive with
    /// [`Channel::try_recv`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for super::Listener {
    /// The listening socket, for event loops.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
