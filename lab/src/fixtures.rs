//! Kernel-module fixtures: modules the lab builds for its kernel from Debian's
//! source and headers packages plus `lab/fixtures/`, as part of `fetch`.
//!
//! * `dummy_hcd` with `lab/fixtures/dummy_hcd-sg.patch` (scatter-gather, so
//!   FunctionFS DMABUF works; loaded instead of the kernel's own);
//! * `industrialio-buffer-dma` (Debian's kernel has `IIO_BUFFER_DMA` unset);
//! * `fake_adc` (`lab/fixtures/fake_adc/`), an IIO device with a DMA buffer.
//!
//! Steps, each cached under the cache directory and skipped when done:
//! download `linux-source-6.12`, the headers (arch and common) and
//! `linux-kbuild` at [`PACKAGE_VERSION`] with the private apt configuration
//! (`<cache>/debs`); unpack the three build packages into
//! `<cache>/kbuild/<version>/root` and point the arch headers' `Makefile` at
//! the unpacked common tree (it names `/usr/src/...`); extract only
//! [`SOURCE_FILES`] from the source tarball into `<cache>/kbuild/<version>/src`;
//! copy them and the fixtures into a build directory, apply the patch
//! (`patch -F0`: no fuzz), `make -C <headers> M=<dir> modules
//! CONFIG_DEBUG_INFO_BTF_MODULES=` (no `pahole` here); keep the `.ko`s in
//! `<cache>/fixtures/<version>/<key>/`, where `<key>` is a hash of every
//! input, so a changed fixture is rebuilt. Every failure stops `fetch` with
//! the command and its output.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::bail;
use crate::fetch::{apt_download, find_deb, KERNEL_VERSION};
use crate::util::{mkdir_p, require_tool, rm_rf, run_output, show, Context, Result};

/// Version of the source, headers and kbuild packages (the kernel's own).
pub const PACKAGE_VERSION: &str = "6.12.95-1~bpo12+1";
/// The kernel source package (a `.tar.xz` of the tree, 153 MB).
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";
/// The packages an external-module build needs.
pub const BUILD_PACKAGES: [&str; 3] = [
    "linux-headers-6.12.95+deb12-amd64",
    "linux-headers-6.12.95+deb12-common",
    "linux-kbuild-6.12.95+deb12",
];
const TARBALL: &str = "./usr/src/linux-source-6.12.tar.xz";
const TARBALL_TOP: &str = "linux-source-6.12";
const HEADERS_DIR: &str = "usr/src/linux-headers-6.12.95+deb12-amd64";
const COMMON_DIR: &str = "usr/src/linux-headers-6.12.95+deb12-common";
/// Files taken from the kernel source, relative to its top directory.
pub const SOURCE_FILES: [&str; 2] = [
    "drivers/usb/gadget/udc/dummy_hcd.c",
    "drivers/iio/buffer/industrialio-buffer-dma.c",
];
/// The fixture files of the repository (under `lab/fixtures/`).
pub const FIXTURE_FILES: [&str; 3] = ["Kbuild", "dummy_hcd-sg.patch", "fake_adc/fake_adc.c"];
/// The modules built, by file name.
pub const MODULE_FILES: [&str; 3] = ["dummy_hcd.ko", "industrialio-buffer-dma.ko", "fake_adc.ko"];
/// The compiler the kernel was built with (Debian's `.kernelvariables`).
const CC: (&str, &str) = ("x86_64-linux-gnu-gcc-12", "gcc-12");

fn kbuild_dir(cache: &Path) -> PathBuf {
    cache.join("kbuild").join(KERNEL_VERSION)
}

/// FNV-1a, 64 bits: a stable key of the build's inputs (no new dependency).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xffu8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Builds the fixtures if needed; returns the paths of the built modules.
pub fn ensure(cache: &Path) -> Result<Vec<PathBuf>> {
    let fixtures = crate::util::repo_root().join("lab/fixtures");
    let mut inputs = vec![];
    for f in FIXTURE_FILES {
        let p = fixtures.join(f);
        inputs.push(fs::read(&p).with_ctx(|| format!("cannot read fixture {}", p.display()))?);
    }
    let mut parts: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    parts.push(PACKAGE_VERSION.as_bytes());
    parts.push(KERNEL_VERSION.as_bytes());
    let key = format!("{:016x}", fnv1a(&parts));
    let out = cache.join("fixtures").join(KERNEL_VERSION).join(&key);
    let built: Vec<PathBuf> = MODULE_FILES.iter().map(|m| out.join(m)).collect();
    if out.join(".built").is_file() && built.iter().all(|p| p.is_file()) {
        eprintln!("lab: module fixtures already built in {}", out.display());
        return Ok(built);
    }
    let start = Instant::now();
    let make = require_tool("make", "make")?;
    // Debian's headers name the compiler (CC = x86_64-linux-gnu-gcc-12).
    require_tool(CC.0, CC.1)?;
    let patch = require_tool("patch", "patch")?;
    require_tool("dpkg-deb", "dpkg")?;
    require_tool("tar", "tar")?;
    require_tool("xz", "xz-utils")?;

    download_missing(cache)?;
    let headers = unpack_build_packages(cache)?;
    let src = extract_sources(cache)?;

    let build = out.with_extension("partial");
    rm_rf(&build)?;
    mkdir_p(&build)?;
    fs::copy(fixtures.join("Kbuild"), build.join("Kbuild"))
        .with_ctx(|| format!("cannot copy Kbuild into {}", build.display()))?;
    fs::copy(
        fixtures.join("fake_adc/fake_adc.c"),
        build.join("fake_adc.c"),
    )
    .with_ctx(|| format!("cannot copy fake_adc.c into {}", build.display()))?;
    for f in SOURCE_FILES {
        let name = Path::new(f).file_name().expect("a file name");
        fs::copy(src.join(f), build.join(name))
            .with_ctx(|| format!("cannot copy {f} into {}", build.display()))?;
    }
    // The file is named on the command line: the patch's own paths are not used.
    run_output(
        Command::new(patch)
            .args([
                "--batch",
                "--forward",
                "-F0",
                "--no-backup-if-mismatch",
                "-i",
            ])
            .arg(fixtures.join("dummy_hcd-sg.patch"))
            .arg(build.join("dummy_hcd.c")),
    )
    .with_ctx(|| "applying lab/fixtures/dummy_hcd-sg.patch to dummy_hcd.c")?;
    let mut mk = Command::new(make);
    mk.arg("-C")
        .arg(&headers)
        .arg(format!("M={}", build.display()))
        .arg("modules")
        .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
        .arg(format!(
            "-j{}",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ))
        .stdin(Stdio::null());
    eprintln!("lab: $ {}", show(&mk));
    run_output(&mut mk)?;
    mkdir_p(&out)?;
    for m in MODULE_FILES {
        fs::copy(build.join(m), out.join(m))
            .with_ctx(|| format!("make built no {m} in {}", build.display()))?;
    }
    fs::write(out.join(".built"), format!("{}\n", fixtures.display()))
        .with_ctx(|| format!("cannot write {}", out.join(".built").display()))?;
    rm_rf(&build)?;
    eprintln!(
        "lab: module fixtures built in {:.1}s: {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(built)
}

fn all_packages() -> impl Iterator<Item = &'static str> {
    std::iter::once(SOURCE_PACKAGE).chain(BUILD_PACKAGES)
}

fn download_missing(cache: &Path) -> Result<()> {
    let mut missing = vec![];
    for p in all_packages() {
        if find_deb(cache, p)?.is_none() {
            missing.push(format!("{p}={PACKAGE_VERSION}"));
        }
    }
    if !missing.is_empty() {
        apt_download(cache, &missing)?;
    }
    for p in all_packages() {
        if find_deb(cache, p)?.is_none() {
            bail!(
                "apt-get download succeeded but no {p}_*.deb is in {}",
                cache.join("debs").display()
            );
        }
    }
    Ok(())
}

fn deb(cache: &Path, package: &str) -> Result<PathBuf> {
    find_deb(cache, package)?
        .ok_or_else(|| crate::util::Error::msg(format!("{package} was not downloaded")))
}

/// Unpacks the headers and kbuild packages; returns the headers directory
/// to pass to `make -C`.
fn unpack_build_packages(cache: &Path) -> Result<PathBuf> {
    let root = kbuild_dir(cache).join("root");
    let headers = root.join(HEADERS_DIR);
    if root.join(".unpacked").is_file() {
        return Ok(headers);
    }
    let tmp = root.with_extension("partial");
    rm_rf(&tmp)?;
    mkdir_p(&tmp)?;
    for p in BUILD_PACKAGES {
        let d = deb(cache, p)?;
        eprintln!("lab: unpacking {}", d.display());
        run_output(Command::new("dpkg-deb").arg("-x").arg(&d).arg(&tmp))?;
    }
    // The arch Makefile is one line including the common one by its
    // installed path; the `scripts` and `tools` links are relative.
    let makefile = tmp.join(HEADERS_DIR).join("Makefile");
    let text =
        fs::read_to_string(&makefile).with_ctx(|| format!("cannot read {}", makefile.display()))?;
    let installed = format!("/{COMMON_DIR}/Makefile");
    if !text.contains(&installed) {
        bail!(
            "{} does not include {installed} as expected: {text:?}",
            makefile.display()
        );
    }
    let unpacked = root.join(COMMON_DIR).join("Makefile");
    fs::write(
        &makefile,
        text.replace(&installed, &unpacked.display().to_string()),
    )
    .with_ctx(|| format!("cannot write {}", makefile.display()))?;
    rm_rf(&root)?;
    fs::rename(&tmp, &root)
        .with_ctx(|| format!("cannot rename {} to {}", tmp.display(), root.display()))?;
    fs::write(root.join(".unpacked"), "")
        .with_ctx(|| format!("cannot write {}", root.join(".unpacked").display()))?;
    Ok(headers)
}

/// Extracts [`SOURCE_FILES`] from the source package's tarball:
/// `dpkg-deb --fsys-tarfile | tar -xO <tarball> | tar -xJ <files>`.
fn extract_sources(cache: &Path) -> Result<PathBuf> {
    let src = kbuild_dir(cache).join("src");
    let stamp = src.join(".extracted");
    let want = SOURCE_FILES.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(src);
    }
    let d = deb(cache, SOURCE_PACKAGE)?;
    eprintln!(
        "lab: extracting {} from {}",
        SOURCE_FILES.join(" "),
        d.display()
    );
    let tmp = src.with_extension("partial");
    rm_rf(&tmp)?;
    mkdir_p(&tmp)?;
    let mut a = Command::new("dpkg-deb");
    a.arg("--fsys-tarfile").arg(&d).stdout(Stdio::piped());
    let mut b = Command::new("tar");
    b.args(["-xO", TARBALL]).stdout(Stdio::piped());
    let mut c = Command::new("tar");
    c.arg("-xJ")
        .arg("-C")
        .arg(&tmp)
        .arg("--strip-components=1")
        .args(SOURCE_FILES.iter().map(|f| format!("{TARBALL_TOP}/{f}")));
    let mut pa = a
        .spawn()
        .with_ctx(|| format!("cannot start `{}`", show(&a)))?;
    b.stdin(pa.stdout.take().expect("piped"));
    let mut pb = b
        .spawn()
        .with_ctx(|| format!("cannot start `{}`", show(&b)))?;
    c.stdin(pb.stdout.take().expect("piped"));
    let sc = c
        .status()
        .with_ctx(|| format!("cannot run `{}`", show(&c)))?;
    let sb = pb
        .wait()
        .with_ctx(|| format!("waiting for `{}`", show(&b)))?;
    let sa = pa
        .wait()
        .with_ctx(|| format!("waiting for `{}`", show(&a)))?;
    for (st, cmd) in [(sa, &a), (sb, &b), (sc, &c)] {
        if !st.success() {
            bail!("`{}` failed ({st})", show(cmd));
        }
    }
    for f in SOURCE_FILES {
        if !tmp.join(f).is_file() {
            bail!("{f} is not in {TARBALL} of {}", d.display());
        }
    }
    rm_rf(&src)?;
    fs::rename(&tmp, &src)
        .with_ctx(|| format!("cannot rename {} to {}", tmp.display(), src.display()))?;
    fs::write(&stamp, want).with_ctx(|| format!("cannot write {}", stamp.display()))?;
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_any_input() {
        let a = fnv1a(&[b"ab", b"c"]);
        assert_ne!(a, fnv1a(&[b"a", b"bc"]));
        assert_ne!(a, fnv1a(&[b"ab", b"d"]));
        assert_eq!(a, fnv1a(&[b"ab", b"c"]));
    }

    #[test]
    fn fixture_files_exist() {
        let dir = crate::util::repo_root().join("lab/fixtures");
        for f in FIXTURE_FILES {
            assert!(dir.join(f).is_file(), "{f}");
        }
        let kbuild = fs::read_to_string(dir.join("Kbuild")).unwrap();
        for m in MODULE_FILES {
            let obj = m.replace(".ko", ".o");
            assert!(kbuild.contains(&obj), "Kbuild lacks {obj}");
        }
    }
}
