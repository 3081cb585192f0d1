//! A private directory for the command's sockets and scratch files: not a
//! predictable path in a shared `/tmp`.
//!
//! # DOC: private directories
//!
//! [`PrivateDir::new`] makes `dmabuf-PID-RANDOM` under `$XDG_RUNTIME_DIR`
//! (when set and absolute) or the temporary directory, with `mkdir`'s
//! mode 0700: `mkdir` fails if the name exists, so another user cannot
//! have prepared it (or a link in its place), and nobody but this user
//! can create, replace or connect to anything inside. It is removed with
//! what it holds when dropped.

use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A directory only this user can enter, removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

/// A random number from the standard library's per-process random keys.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl PrivateDir {
    /// A new private directory.
    pub fn new() -> std::io::Result<PrivateDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut last = None;
        for _ in 0..16 {
            let path = base.join(format!("dmabuf-{}-{:016x}", std::process::id(), random()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot create a private directory in {}: {e}",
                            base.display()
                        ),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_are_0700_distinct_and_removed() {
        let a = PrivateDir::new().unwrap();
        let b = PrivateDir::new().unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(a.join("x"), b"x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }
}
