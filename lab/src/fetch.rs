//! `fetch`: downloads Debian's 6.12 kernel package with a private apt configuration
//! and unpacks it into the lab's cache directory.
//!
//! The machine's global apt configuration is never changed: a private
//! `sources.list` (bookworm + bookworm-backports, on the mirror the machine
//! already uses) and private lists/cache directories live under the cache dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::util::{mkdir_p, require_tool, rm_rf, run_output, run_status, Context, Result};

/// Debian package holding the lab's kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-6.12.95+deb12-amd64";
/// Suite the package comes from.
pub const KERNEL_SUITE: &str = "bookworm-backports";
/// `uname -r` of that kernel (the name of its `/lib/modules` directory).
pub const KERNEL_VERSION: &str = "6.12.95+deb12-amd64";
/// Mirror used when the machine's apt sources name none for bookworm.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Paths of an unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage to pass to QEMU's `-kernel`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked package (modules are `.ko.xz`).
    pub modules: PathBuf,
    /// The kernel release string.
    pub version: String,
    /// Kernel modules the lab built for this kernel (see [`crate::fixtures`]),
    /// loaded instead of the kernel's own modules of the same name.
    pub fixtures: Vec<PathBuf>,
}

/// The cache directory: `$DMABUF_LAB_CACHE`, or `lab/cache` in the repository.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("DMABUF_LAB_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::util::repo_root().join("lab/cache"),
    }
}

fn unpacked_dir(cache: &Path) -> PathBuf {
    cache.join("kernel").join(KERNEL_VERSION)
}

fn stamp(cache: &Path) -> PathBuf {
    unpacked_dir(cache).join(".unpacked")
}

/// Returns the unpacked kernel if `fetch` already ran, without touching the network.
pub fn cached(cache: &Path) -> Option<Kernel> {
    let root = unpacked_dir(cache);
    let k = Kernel {
        vmlinuz: root.join(format!("boot/vmlinuz-{KERNEL_VERSION}")),
        modules: root.join(format!("lib/modules/{KERNEL_VERSION}")),
        version: KERNEL_VERSION.to_string(),
        fixtures: vec![],
    };
    let ok =
        stamp(cache).is_file() && k.vmlinuz.is_file() && k.modules.join("modules.dep").is_file();
    ok.then_some(k)
}

/// Makes sure the kernel is downloaded and unpacked and the lab's module
/// fixtures are built for it; downloads and builds nothing when they are.
pub fn fetch(cache: &Path) -> Result<Kernel> {
    let mut kernel = fetch_kernel(cache)?;
    kernel.fixtures = crate::fixtures::ensure(cache).with_ctx(|| {
        format!("building the lab's kernel-module fixtures (lab/fixtures/) for {KERNEL_VERSION}")
    })?;
    Ok(kernel)
}

fn fetch_kernel(cache: &Path) -> Result<Kernel> {
    if let Some(k) = cached(cache) {
        eprintln!(
            "lab: kernel {KERNEL_VERSION} already in {}",
            cache.display()
        );
        return Ok(k);
    }
    mkdir_p(cache)?;
    let deb = match find_deb(cache, KERNEL_PACKAGE)? {
        Some(deb) => deb,
        None => {
            apt_download(cache, &[format!("{KERNEL_PACKAGE}/{KERNEL_SUITE}")])?;
            find_deb(cache, KERNEL_PACKAGE)?.ok_or_else(|| {
                crate::util::Error::msg(format!(
                    "apt-get download succeeded but no {KERNEL_PACKAGE}_*.deb is in {}",
                    cache.join("debs").display()
                ))
            })?
        }
    };
    unpack(cache, &deb)?;
    cached(cache).ok_or_else(|| {
        crate::util::Error::msg(format!(
            "{} unpacked into {} but has no boot/vmlinuz-{KERNEL_VERSION} or lib/modules/{KERNEL_VERSION}",
            deb.display(),
            unpacked_dir(cache).display()
        ))
    })
}

/// The downloaded `.deb` of `package` in `<cache>/debs`, if there is one.
pub fn find_deb(cache: &Path, package: &str) -> Result<Option<PathBuf>> {
    let dir = cache.join("debs");
    if !dir.is_dir() {
        return Ok(None);
    }
    let prefix = format!("{package}_");
    for e in fs::read_dir(&dir).with_ctx(|| format!("cannot read {}", dir.display()))? {
        let p = e
            .with_ctx(|| format!("cannot read {}", dir.display()))?
            .path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && (name.ends_with("_amd64.deb") || name.ends_with("_all.deb"))
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// `apt-get download`s `specs` (`name/suite` or `name=version`) into
/// `<cache>/debs` with the lab's private apt configuration.
pub fn apt_download(cache: &Path, specs: &[String]) -> Result<()> {
    let apt_get = require_tool("apt-get", "apt")?;
    let src = machine_source();
    let apt = cache.join("apt");
    for d in [
        "lists/partial",
        "cache/archives/partial",
        "sources.list.d",
        "preferences.d",
    ] {
        mkdir_p(&apt.join(d))?;
    }
    let list = apt.join("sources.list");
    fs::write(&list, private_sources_list(&src))
        .with_ctx(|| format!("cannot write {}", list.display()))?;
    eprintln!(
        "lab: downloading {} from {} (private apt config in {})",
        specs.join(" "),
        src.uri,
        apt.display()
    );
    let opts = private_apt_options(&apt);
    let mut update = Command::new(&apt_get);
    update.args(&opts).arg("update");
    run_status(&mut update)?;

    let debs = cache.join("debs");
    mkdir_p(&debs)?;
    let mut dl = Command::new(&apt_get);
    dl.args(&opts)
        .arg("download")
        .args(specs)
        .current_dir(&debs);
    run_status(&mut dl)
}

fn unpack(cache: &Path, deb: &Path) -> Result<()> {
    let dpkg = require_tool("dpkg", "dpkg")?;
    let root = unpacked_dir(cache);
    let tmp = root.with_extension("partial");
    rm_rf(&tmp)?;
    mkdir_p(&tmp)?;
    eprintln!("lab: unpacking {}", deb.display());
    run_output(Command::new(dpkg).arg("-x").arg(deb).arg(&tmp))?;
    // The package ships no modules.dep (its postinst would make it).
    crate::modules::depmod_tree(&tmp, KERNEL_VERSION)?;
    rm_rf(&root)?;
    fs::rename(&tmp, &root)
        .with_ctx(|| format!("cannot rename {} to {}", tmp.display(), root.display()))?;
    fs::write(stamp(cache), format!("{}\n", deb.display()))
        .with_ctx(|| format!("cannot write {}", stamp(cache).display()))?;
    Ok(())
}

/// The apt `-o` options that keep everything apt reads or writes (sources,
/// lists, caches, preferences) inside `apt_dir`.
pub fn private_apt_options(apt_dir: &Path) -> Vec<String> {
    let d = apt_dir.display();
    vec![
        format!("-oDir::Etc::SourceList={d}/sources.list"),
        format!("-oDir::Etc::SourceParts={d}/sources.list.d"),
        format!("-oDir::Etc::Preferences={d}/preferences"),
        format!("-oDir::Etc::PreferencesParts={d}/preferences.d"),
        format!("-oDir::State::Lists={d}/lists"),
        format!("-oDir::Cache={d}/cache"),
        format!("-oDir::Cache::Archives={d}/cache/archives"),
        "-oAPT::Sandbox::User=root".into(),
        "-oAcquire::Languages=none".into(),
        "-oAPT::Architectures=amd64".into(),
        "-q".into(),
    ]
}

/// A Debian archive as named in the machine's apt sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Mirror URI, e.g. `http://deb.debian.org/debian`.
    pub uri: String,
    /// Keyring named by the source's `signed-by`, if any.
    pub signed_by: Option<String>,
}

/// The bookworm mirror the machine's apt uses (`$DMABUF_LAB_MIRROR` overrides),
/// falling back to deb.debian.org.
pub fn machine_source() -> Source {
    let default_key = Path::new(DEFAULT_KEYRING)
        .is_file()
        .then(|| DEFAULT_KEYRING.to_string());
    if let Ok(uri) = std::env::var("DMABUF_LAB_MIRROR") {
        if !uri.is_empty() {
            return Source {
                uri,
                signed_by: default_key,
            };
        }
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        let found = if name.ends_with(".sources") {
            find_in_deb822(&text)
        } else if name.ends_with(".list") {
            find_in_one_line(&text)
        } else {
            None
        };
        if let Some(mut s) = found {
            if s.signed_by.is_none() {
                s.signed_by = default_key;
            }
            return s;
        }
    }
    Source {
        uri: DEFAULT_MIRROR.into(),
        signed_by: default_key,
    }
}

fn is_main_suite(suite: &str) -> bool {
    suite.starts_with("bookworm") && !suite.contains("security")
}

/// Finds a bookworm (non-security) `deb` entry in one-line-style sources.
pub fn find_in_one_line(text: &str) -> Option<Source> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let (opts, after) = r.split_once(']')?;
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if is_main_suite(suite) {
            return Some(Source {
                uri: uri.trim_end_matches('/').to_string(),
                signed_by,
            });
        }
    }
    None
}

/// Finds a bookworm (non-security) `deb` entry in deb822-style sources.
pub fn find_in_deb822(text: &str) -> Option<Source> {
    let mut paragraphs: Vec<Vec<(String, String)>> = vec![vec![]];
    for line in text.lines() {
        if line.trim().is_empty() {
            paragraphs.push(vec![]);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = paragraphs.last_mut().and_then(|p| p.last_mut()) {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            let p = paragraphs.last_mut().expect("never empty");
            p.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    for p in paragraphs {
        let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("types")
            .unwrap_or("")
            .split_whitespace()
            .any(|t| t == "deb")
        {
            continue;
        }
        if !get("suites")
            .unwrap_or("")
            .split_whitespace()
            .any(is_main_suite)
        {
            continue;
        }
        let Some(uri) = get("uris").and_then(|u| u.split_whitespace().next()) else {
            continue;
        };
        // An inline (multi-line) key cannot be passed on as a path.
        let signed_by = get("signed-by")
            .filter(|s| s.starts_with('/') && !s.contains(' '))
            .map(str::to_string);
        return Some(Source {
            uri: uri.trim_end_matches('/').to_string(),
            signed_by,
        });
    }
    None
}

/// The lab's private `sources.list`: bookworm and bookworm-backports on `src`.
pub fn private_sources_list(src: &Source) -> String {
    let opts = match &src.signed_by {
        Some(k) => format!("[arch=amd64 signed-by={k}]"),
        None => "[arch=amd64]".into(),
    };
    let mut s = String::from("# Written by dmabuf-lab fetch; private to the lab.\n");
    for suite in ["bookworm", KERNEL_SUITE] {
        s.push_str(&format!("deb {opts} {} {suite} main\n", src.uri));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_bookworm_not_security() {
        let text = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb deb-src\nURIs: http://mirror.example/debian/\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        assert_eq!(
            find_in_deb822(text),
            Some(Source {
                uri: "http://mirror.example/debian".into(),
                signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
            })
        );
    }

    #[test]
    fn deb822_skips_disabled_and_other_suites() {
        let text = "Types: deb\nURIs: http://a/\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n";
        assert_eq!(find_in_deb822(text), None);
    }

    #[test]
    fn one_line_with_options() {
        let text = "# deb http://old bookworm main\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n";
        assert_eq!(
            find_in_one_line(text),
            Some(Source {
                uri: "http://m/debian".into(),
                signed_by: Some("/k.gpg".into())
            })
        );
        assert_eq!(find_in_one_line("deb http://x nodistro main\n"), None);
    }

    #[test]
    fn private_list_names_both_suites() {
        let s = private_sources_list(&Source {
            uri: "http://m/debian".into(),
            signed_by: None,
        });
        let opts = "[arch=amd64]";
        assert!(s.contains(&format!("deb {opts} http://m/debian bookworm main\n")));
        assert!(s.contains(&format!(
            "deb {opts} http://m/debian bookworm-backports main\n"
        )));
    }

    #[test]
    fn apt_options_stay_private() {
        let opts = private_apt_options(Path::new("/c/apt"));
        for o in &opts {
            if let Some(v) = o.strip_prefix("-oDir::") {
                assert!(v.contains("=/c/apt/"), "{o} escapes the private dir");
            }
        }
    }
}

/// The kernel release (`uname -r`) an x86 bzImage was built as: the first
/// word of the version string its setup header points to (boot protocol
/// 2.00+: `HdrS` at 0x202, the string at 0x200 + the u16 at 0x20E).
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([*image.get(0x20E)?, *image.get(0x20F)?]);
    let start = 0x200 + usize::from(off);
    let text = image.get(start..)?;
    let end = text.iter().take(512).position(|&b| b == 0)?;
    let s = std::str::from_utf8(&text[..end]).ok()?;
    let release = s.split_whitespace().next()?;
    (!release.is_empty()).then(|| release.to_string())
}

/// A kernel the user already has: `image` (an x86 bzImage, such as
/// `/boot/vmlinuz-$(uname -r)`) and `modules`, its `lib/modules/<release>`
/// directory with `modules.dep` (default `/lib/modules/<release>`). The
/// release is read from the image, and the modules directory must be named
/// after it (the guest's `modprobe` looks there by `uname -r`). The lab's
/// module fixtures are built for [`KERNEL_VERSION`] only: they are used
/// when the image is that release, else left out with a warning (the tests
/// that need them then fail).
pub fn user_kernel(cache: &Path, image: &Path, modules: Option<&Path>) -> Result<Kernel> {
    let bytes =
        fs::read(image).with_ctx(|| format!("--kernel {}: cannot read", image.display()))?;
    let Some(version) = bzimage_release(&bytes) else {
        bail!(
            "--kernel {}: not an x86 bzImage (no `HdrS` setup header with a version string); \
             pass the kernel's boot image, such as /boot/vmlinuz-RELEASE",
            image.display()
        );
    };
    let modules = match modules {
        Some(m) => m.to_path_buf(),
        None => Path::new("/lib/modules").join(&version),
    };
    if !modules.join("modules.dep").is_file() {
        bail!(
            "--modules {}: no modules.dep there (kernel {version} from {}); pass the kernel's \
             lib/modules/{version} directory with --modules, or run `depmod -b ROOT {version}` \
             on its root",
            modules.display(),
            image.display()
        );
    }
    let dir_name = modules
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if dir_name.as_deref() != Some(version.as_str()) {
        bail!(
            "--modules {} is named {:?} but {} is kernel {version}: the modules must be that \
             kernel's (lib/modules/{version})",
            modules.display(),
            dir_name.unwrap_or_default(),
            image.display()
        );
    }
    let fixtures = if version == KERNEL_VERSION {
        crate::fixtures::ensure(cache).with_ctx(|| {
            format!(
                "building the lab's kernel-module fixtures (lab/fixtures/) for {KERNEL_VERSION}"
            )
        })?
    } else {
        eprintln!(
            "lab: warning: the lab's module fixtures (lab/fixtures/: dummy_hcd with \
             scatter-gather, IIO DMA buffer, fake ADC) are built for {KERNEL_VERSION} only; \
             kernel {version} runs without them, and the FunctionFS-DMABUF and IIO tests fail"
        );
        vec![]
    };
    eprintln!(
        "lab: kernel {version} from {} (modules {})",
        image.display(),
        modules.display()
    );
    Ok(Kernel {
        vmlinuz: image.to_path_buf(),
        modules,
        version,
        fixtures,
    })
}

#[cfg(test)]
mod user_kernel_tests {
    use super::*;

    /// A fake bzImage: the setup header's magic and version pointer.
    fn image(version: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        let off: u16 = 0x300;
        b[0x20E..0x210].copy_from_slice(&off.to_le_bytes());
        let at = 0x200 + usize::from(off);
        b[at..at + version.len()].copy_from_slice(version);
        b
    }

    #[test]
    fn the_release_comes_from_the_setup_header() {
        let b = image(b"6.12.95+deb12-amd64 (debian-kernel@lists.debian.org) #1 SMP\0");
        assert_eq!(bzimage_release(&b).as_deref(), Some("6.12.95+deb12-amd64"));
        // Not a bzImage, truncated, no NUL, empty.
        assert_eq!(bzimage_release(b"ELF"), None);
        let mut no_magic = b.clone();
        no_magic[0x202] = b'X';
        assert_eq!(bzimage_release(&no_magic), None);
        assert_eq!(bzimage_release(&b[..0x400]), None);
        assert_eq!(bzimage_release(&image(&[b'7'; 600])), None);
        assert_eq!(bzimage_release(&image(b"\0")), None);
    }

    #[test]
    fn a_user_kernel_is_checked_against_its_modules() {
        let dir = std::env::temp_dir().join(format!("lab-user-kernel-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let img = dir.join("vmlinuz");
        let mods = dir.join("lib/modules/6.1.0-test");
        fs::create_dir_all(&mods).unwrap();
        fs::write(&img, image(b"6.1.0-test #1\0")).unwrap();
        // No modules.dep yet.
        let e = user_kernel(&dir, &img, Some(&mods))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no modules.dep"), "{e}");
        fs::write(mods.join("modules.dep"), "").unwrap();
        let k = user_kernel(&dir, &img, Some(&mods)).unwrap();
        assert_eq!(k.version, "6.1.0-test");
        assert!(
            k.fixtures.is_empty(),
            "fixtures are built for {KERNEL_VERSION} only"
        );
        // Modules of another release are refused.
        let other = dir.join("lib/modules/6.2.0");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("modules.dep"), "").unwrap();
        let e = user_kernel(&dir, &img, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be that kernel's"), "{e}");
        // Not a kernel image.
        fs::write(&img, b"#!/bin/sh\n").unwrap();
        let e = user_kernel(&dir, &img, Some(&mods))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an x86 bzImage"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
