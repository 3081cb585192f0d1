//! A writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Written here rather than by calling `cpio` so that modes, owners, device
//! nodes and symlinks are exactly what the guest needs, whoever builds it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Streams a `newc` archive; parents of every entry are emitted automatically
/// (the kernel's unpacker does not create missing parent directories).
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

const MODE_DIR: u32 = 0o040_000;
const MODE_FILE: u32 = 0o100_000;
const MODE_LINK: u32 = 0o120_000;
const MODE_CHR: u32 = 0o020_000;

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
            dirs: BTreeSet::new(),
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = ((4 - self.written % 4) % 4) as usize;
        self.out.write_all(&[0u8; 3][..n])?;
        self.written += n as u64;
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too big for cpio"))?;
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & MODE_DIR == MODE_DIR { 2 } else { 1 },
            0, // mtime: reproducible archives
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += h.len() as u64 + name.len() as u64 + 1;
        self.pad()
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if !self.dirs.contains(&prefix) {
                let p = prefix.clone();
                self.header(&p, MODE_DIR | 0o755, 0, (0, 0))?;
                self.dirs.insert(p);
            }
        }
        Ok(())
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = path.trim_matches('/').to_string();
        if self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.header(&path, MODE_DIR | perm, 0, (0, 0))?;
        self.dirs.insert(path);
        Ok(())
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.file_from(path, perm, data.len() as u64, &mut &data[..])
    }

    /// Adds a regular file of `size` bytes read from `src`.
    pub fn file_from(
        &mut self,
        path: &str,
        perm: u32,
        size: u64,
        src: &mut dyn Read,
    ) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.header(path, MODE_FILE | perm, size, (0, 0))?;
        let copied = io::copy(&mut src.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, got {copied}"),
            ));
        }
        self.written += size;
        self.pad()
    }

    /// Adds a copy of the host file `src` at `path`, keeping its permission bits.
    pub fn copy_file(&mut self, path: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut f = File::open(src)?;
        let meta = f.metadata()?;
        self.file_from(path, meta.permissions().mode() & 0o7777, meta.len(), &mut f)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.header(path, MODE_LINK | 0o777, target.len() as u64, (0, 0))?;
        self.out.write_all(target.as_bytes())?;
        self.written += target.len() as u64;
        self.pad()
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.header(path, MODE_CHR | perm, 0, (major, minor))
    }

    /// Adds the host directory tree `src` under `prefix` (files, dirs, symlinks).
    pub fn tree(&mut self, prefix: &str, src: &Path) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{}/{name}", prefix.trim_end_matches('/'));
            let ft = e.file_type()?;
            if ft.is_dir() {
                self.dir(&path, 0o755)?;
                self.tree(&path, &e.path())?;
            } else if ft.is_symlink() {
                let t = std::fs::read_link(e.path())?;
                self.symlink(&path, &t.to_string_lossy())?;
            } else if ft.is_file() {
                self.copy_file(&path, &e.path())?;
            }
        }
        Ok(())
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = vec![];
        let mut pos = 0;
        loop {
            let h = std::str::from_utf8(&buf[pos..pos + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&buf[pos + 110..pos + 110 + namesize - 1]).unwrap();
            pos = (pos + 110 + namesize).next_multiple_of(4);
            let data = buf[pos..pos + size].to_vec();
            pos = (pos + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(pos, buf.len());
                return out;
            }
            out.push((name.to_string(), mode, data));
        }
    }

    #[test]
    fn parents_come_first_and_alignment_holds() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/lab/tests/a", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "/bin/busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.dir("lab", 0o755).unwrap();
        let buf = w.finish().unwrap();
        let e = entries(&buf);
        let names: Vec<_> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "lab",
                "lab/tests",
                "lab/tests/a",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(e[2].1, 0o100755);
        assert_eq!(e[2].2, b"hello");
        assert_eq!(e[4].1, 0o120777);
        assert_eq!(e[4].2, b"/bin/busybox");
        assert_eq!(e[6].1, 0o020600);
    }
}
