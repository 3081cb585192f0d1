//! Pixel formats (DRM fourcc codes) and format modifiers.
//!
//! # DOC: formats
//!
//! A [`Fourcc`] is the DRM format code of `include/uapi/drm/drm_fourcc.h`:
//! four ASCII characters packed little-endian (`NV12` is `0x3231564e`).
//! Any code can be carried; the formats this library knows the layout of
//! have a [`FormatInfo`] ([`Fourcc::info`]): their planes, each plane's
//! bytes per pixel, and the chroma subsampling of the planes after the
//! first. The table is the kernel's `drm_format_info` for these codes:
//! a plane of a subsampled format is `ceil(width / hsub)` pixels wide and
//! `ceil(height / vsub)` rows high (`drm_format_info_plane_width`), so odd
//! sizes are allowed as the kernel allows them.
//!
//! A [`Modifier`] is the DRM format modifier (tiling, compression) as a
//! `u64`: [`Modifier::LINEAR`] is the only layout the library computes and
//! checks in full; every other value is carried through unchanged, and
//! [`Modifier::INVALID`] (`DRM_FORMAT_MOD_INVALID`) means "no explicit
//! modifier: the layout the producing driver chose" (implicit modifiers).
//!
//! `Display` shows a code as its four characters (`XR24`, `NV12`), or as
//! hex when they are not printable ASCII; [`Fourcc::name`] gives the DRM
//! name (`XRGB8888`). Parsing ([`str::parse`]) accepts the DRM name or
//! the four characters of a known format, in any case (`nv12`,
//! `xrgb8888`, `XR24`), and refuses anything else with an error that
//! lists the known formats.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A DRM format code (`DRM_FORMAT_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fourcc(pub u32);

impl Fourcc {
    /// The code of four ASCII characters, as `fourcc_code(a, b, c, d)`.
    pub const fn from_bytes(c: [u8; 4]) -> Fourcc {
        Fourcc(u32::from_le_bytes(c))
    }

    /// The code's four bytes, first character first.
    pub const fn to_bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// `DRM_FORMAT_XRGB8888` (`XR24`): 32-bit B, G, R, X bytes in memory.
    pub const XRGB8888: Fourcc = Fourcc::from_bytes(*b"XR24");
    /// `DRM_FORMAT_ARGB8888` (`AR24`): 32-bit B, G, R, A bytes in memory.
    pub const ARGB8888: Fourcc = Fourcc::from_bytes(*b"AR24");
    /// `DRM_FORMAT_XBGR8888` (`XB24`): 32-bit R, G, B, X bytes in memory.
    pub const XBGR8888: Fourcc = Fourcc::from_bytes(*b"XB24");
    /// `DRM_FORMAT_ABGR8888` (`AB24`): 32-bit R, G, B, A bytes in memory.
    pub const ABGR8888: Fourcc = Fourcc::from_bytes(*b"AB24");
    /// `DRM_FORMAT_RGB888` (`RG24`): 24-bit B, G, R bytes in memory.
    pub const RGB888: Fourcc = Fourcc::from_bytes(*b"RG24");
    /// `DRM_FORMAT_RGB565` (`RG16`): 16-bit little-endian R:G:B 5:6:5.
    pub const RGB565: Fourcc = Fourcc::from_bytes(*b"RG16");
    /// `DRM_FORMAT_R8` (`R8  `): one 8-bit channel.
    pub const R8: Fourcc = Fourcc::from_bytes(*b"R8  ");
    /// `DRM_FORMAT_YUYV` (`YUYV`): packed 4:2:2, Y0 Cb Y1 Cr.
    pub const YUYV: Fourcc = Fourcc::from_bytes(*b"YUYV");
    /// `DRM_FORMAT_UYVY` (`UYVY`): packed 4:2:2, Cb Y0 Cr Y1.
    pub const UYVY: Fourcc = Fourcc::from_bytes(*b"UYVY");
    /// `DRM_FORMAT_NV12` (`NV12`): Y plane, then interleaved CbCr at 2×2
    /// subsampling.
    pub const NV12: Fourcc = Fourcc::from_bytes(*b"NV12");
    /// `DRM_FORMAT_NV21` (`NV21`): Y plane, then interleaved CrCb at 2×2
    /// subsampling.
    pub const NV21: Fourcc = Fourcc::from_bytes(*b"NV21");
    /// `DRM_FORMAT_NV16` (`NV16`): Y plane, then interleaved CbCr at 2×1
    /// subsampling.
    pub const NV16: Fourcc = Fourcc::from_bytes(*b"NV16");
    /// `DRM_FORMAT_YUV420` (`YU12`): Y, Cb and Cr planes, 2×2 subsampling.
    pub const YUV420: Fourcc = Fourcc::from_bytes(*b"YU12");
    /// `DRM_FORMAT_YVU420` (`YV12`): Y, Cr and Cb planes, 2×2 subsampling.
    pub const YVU420: Fourcc = Fourcc::from_bytes(*b"YV12");
    /// `DRM_FORMAT_P010` (`P010`): 16-bit Y plane, then interleaved 16-bit
    /// CbCr at 2×2 subsampling (10 significant bits, high-aligned).
    pub const P010: Fourcc = Fourcc::from_bytes(*b"P010");

    /// The layout of this format, if the library knows it.
    pub fn info(self) -> Option<&'static FormatInfo> {
        FORMATS.iter().find(|f| f.fourcc == self)
    }

    /// The DRM name (`"XRGB8888"`), if the library knows the format.
    pub fn name(self) -> Option<&'static str> {
        self.info().map(|f| f.name)
    }

    /// Every format the library knows the layout of.
    pub fn known() -> impl Iterator<Item = Fourcc> {
        FORMATS.iter().map(|f| f.fourcc)
    }
}

impl fmt::Display for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            // Printable by construction.
            b.iter().try_for_each(|&c| write!(f, "{}", c as char))
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

impl fmt::Debug for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Fourcc({n})"),
            None => write!(f, "Fourcc({self})"),
        }
    }
}

impl From<Fourcc> for u32 {
    fn from(f: Fourcc) -> u32 {
        f.0
    }
}

/// To the `drm` crate's format enum (for its KMS calls); formats it does
/// not know are refused.
impl TryFrom<Fourcc> for ::drm::buffer::DrmFourcc {
    type Error = ::drm::buffer::UnrecognizedFourcc;
    fn try_from(f: Fourcc) -> std::result::Result<Self, Self::Error> {
        ::drm::buffer::DrmFourcc::try_from(f.0)
    }
}

impl From<::drm::buffer::DrmFourcc> for Fourcc {
    fn from(f: ::drm::buffer::DrmFourcc) -> Fourcc {
        Fourcc(f as u32)
    }
}

impl FromStr for Fourcc {
    type Err = Error;

    fn from_str(s: &str) -> Result<Fourcc> {
        let t = s.trim();
        FORMATS
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(t))
            .or_else(|| {
                FORMATS
                    .iter()
                    .find(|f| f.fourcc.to_string().trim_end().eq_ignore_ascii_case(t))
            })
            .map(|f| f.fourcc)
            .ok_or_else(|| {
                let known: Vec<&str> = FORMATS.iter().map(|f| f.name).collect();
                Error::invalid(
                    "parse format",
                    format!("{s:?}"),
                    format!(
                        "unknown pixel format (known: {}, or their four-character codes)",
                        known.join(", ")
                    ),
                )
            })
    }
}

/// One plane of a [`FormatInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneInfo {
    /// Bytes per pixel of this plane (the kernel's `cpp`; for packed 4:2:2
    /// formats the average over a pixel pair).
    pub bytes_per_pixel: u32,
    /// Horizontal subsampling of this plane (1 for the first plane).
    pub hsub: u32,
    /// Vertical subsampling of this plane (1 for the first plane).
    pub vsub: u32,
}

impl PlaneInfo {
    /// Pixels per row of this plane for a frame `width` wide.
    pub fn width(&self, width: u32) -> u32 {
        width.div_ceil(self.hsub)
    }

    /// Rows of this plane for a frame `height` high.
    pub fn height(&self, height: u32) -> u32 {
        height.div_ceil(self.vsub)
    }

    /// Bytes a row of this plane needs at least (the minimum stride).
    pub fn min_stride(&self, width: u32) -> u64 {
        u64::from(self.width(width)) * u64::from(self.bytes_per_pixel)
    }

    /// The alignment of this plane's offset and stride: the largest power
    /// of two dividing the bytes per pixel (so every row starts on an
    /// element boundary: 4 for XRGB8888, 2 for RGB565 and P010's Y plane).
    pub fn alignment(&self) -> u64 {
        1 << self.bytes_per_pixel.trailing_zeros()
    }
}

/// The layout of a known format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatInfo {
    /// The code.
    pub fourcc: Fourcc,
    /// The DRM name without `DRM_FORMAT_` (`"NV12"`).
    pub name: &'static str,
    /// The planes, first to last (1 to 3 here; DRM allows up to 4).
    pub planes: &'static [PlaneInfo],
    /// Whether this is a YUV format.
    pub is_yuv: bool,
}

impl FormatInfo {
    /// Number of planes.
    pub fn plane_count(&self) -> usize {
        self.planes.len()
    }
}

const fn p(bytes_per_pixel: u32, hsub: u32, vsub: u32) -> PlaneInfo {
    PlaneInfo {
        bytes_per_pixel,
        hsub,
        vsub,
    }
}

const FORMATS: &[FormatInfo] = &[
    FormatInfo {
        fourcc: Fourcc::XRGB8888,
        name: "XRGB8888",
        planes: &[p(4, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::ARGB8888,
        name: "ARGB8888",
        planes: &[p(4, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::XBGR8888,
        name: "XBGR8888",
        planes: &[p(4, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::ABGR8888,
        name: "ABGR8888",
        planes: &[p(4, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::RGB888,
        name: "RGB888",
        planes: &[p(3, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::RGB565,
        name: "RGB565",
        planes: &[p(2, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::R8,
        name: "R8",
        planes: &[p(1, 1, 1)],
        is_yuv: false,
    },
    FormatInfo {
        fourcc: Fourcc::YUYV,
        name: "YUYV",
        planes: &[p(2, 1, 1)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::UYVY,
        name: "UYVY",
        planes: &[p(2, 1, 1)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::NV12,
        name: "NV12",
        planes: &[p(1, 1, 1), p(2, 2, 2)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::NV21,
        name: "NV21",
        planes: &[p(1, 1, 1), p(2, 2, 2)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::NV16,
        name: "NV16",
        planes: &[p(1, 1, 1), p(2, 2, 1)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::YUV420,
        name: "YUV420",
        planes: &[p(1, 1, 1), p(1, 2, 2), p(1, 2, 2)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::YVU420,
        name: "YVU420",
        planes: &[p(1, 1, 1), p(1, 2, 2), p(1, 2, 2)],
        is_yuv: true,
    },
    FormatInfo {
        fourcc: Fourcc::P010,
        name: "P010",
        planes: &[p(2, 1, 1), p(4, 2, 2)],
        is_yuv: true,
    },
];

/// A DRM format modifier (`DRM_FORMAT_MOD_*`): the memory layout of a
/// format's planes (linear, or a vendor's tiling or compression).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Modifier(pub u64);

impl Modifier {
    /// `DRM_FORMAT_MOD_LINEAR`: rows one after the other, `stride` bytes
    /// apart.
    pub const LINEAR: Modifier = Modifier(0);
    /// `DRM_FORMAT_MOD_INVALID`: no explicit modifier (the layout is the
    /// one the producing driver chose implicitly).
    pub const INVALID: Modifier = Modifier(0x00ff_ffff_ffff_ffff);

    /// Whether this is [`Modifier::LINEAR`].
    pub fn is_linear(self) -> bool {
        self == Modifier::LINEAR
    }

    /// The vendor byte (`fourcc_mod_get_vendor`).
    pub fn vendor(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The vendor's name (`DRM_FORMAT_MOD_VENDOR_*`), if known.
    pub fn vendor_name(self) -> Option<&'static str> {
        Some(match self.vendor() {
            0 => "NONE",
            1 => "INTEL",
            2 => "AMD",
            3 => "NVIDIA",
            4 => "SAMSUNG",
            5 => "QCOM",
            6 => "VIVANTE",
            7 => "BROADCOM",
            8 => "ARM",
            9 => "ALLWINNER",
            10 => "AMLOGIC",
            11 => "MTK",
            12 => "APPLE",
            _ => return None,
        })
    }
}

impl fmt::Display for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Modifier::LINEAR => f.write_str("LINEAR"),
            Modifier::INVALID => f.write_str("INVALID"),
            m => match m.vendor_name() {
                Some(v) => write!(f, "{v}:{:#x}", m.0 & 0x00ff_ffff_ffff_ffff),
                None => write!(f, "{:#018x}", m.0),
            },
        }
    }
}

impl fmt::Debug for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modifier({self})")
    }
}

impl From<Modifier> for ::drm::buffer::DrmModifier {
    fn from(m: Modifier) -> Self {
        ::drm::buffer::DrmModifier::from(m.0)
    }
}

impl From<::drm::buffer::DrmModifier> for Modifier {
    fn from(m: ::drm::buffer::DrmModifier) -> Modifier {
        Modifier(m.into())
    }
}

impl From<Modifier> for u64 {
    fn from(m: Modifier) -> u64 {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_kernels() {
        // Values from include/uapi/drm/drm_fourcc.h.
        for (f, v) in [
            (Fourcc::XRGB8888, 0x3432_5258),
            (Fourcc::ARGB8888, 0x3432_5241),
            (Fourcc::XBGR8888, 0x3432_4258),
            (Fourcc::ABGR8888, 0x3432_4241),
            (Fourcc::RGB888, 0x3432_4752),
            (Fourcc::RGB565, 0x3631_4752),
            (Fourcc::R8, 0x2020_3852),
            (Fourcc::YUYV, 0x5659_5559),
            (Fourcc::UYVY, 0x5956_5955),
            (Fourcc::NV12, 0x3231_564e),
            (Fourcc::NV21, 0x3132_564e),
            (Fourcc::NV16, 0x3631_564e),
            (Fourcc::YUV420, 0x3231_5559),
            (Fourcc::YVU420, 0x3231_5659),
            (Fourcc::P010, 0x3031_3050),
        ] {
            assert_eq!(f.0, v, "{f:?}");
            assert!(f.info().is_some(), "{f:?} has a layout");
        }
        assert_eq!(Fourcc::known().count(), 15);
        assert_eq!(Modifier::INVALID.0, (1u64 << 56) - 1);
    }

    #[test]
    fn the_table_matches_drm_format_info() {
        // (format, planes as (cpp, hsub, vsub)) from drivers/gpu/drm/drm_fourcc.c.
        type Planes = &'static [(u32, u32, u32)];
        let want: &[(Fourcc, Planes)] = &[
            (Fourcc::XRGB8888, &[(4, 1, 1)]),
            (Fourcc::ARGB8888, &[(4, 1, 1)]),
            (Fourcc::RGB565, &[(2, 1, 1)]),
            (Fourcc::RGB888, &[(3, 1, 1)]),
            (Fourcc::YUYV, &[(2, 1, 1)]),
            (Fourcc::NV12, &[(1, 1, 1), (2, 2, 2)]),
            (Fourcc::NV21, &[(1, 1, 1), (2, 2, 2)]),
            (Fourcc::NV16, &[(1, 1, 1), (2, 2, 1)]),
            (Fourcc::YUV420, &[(1, 1, 1), (1, 2, 2), (1, 2, 2)]),
            (Fourcc::YVU420, &[(1, 1, 1), (1, 2, 2), (1, 2, 2)]),
            (Fourcc::P010, &[(2, 1, 1), (4, 2, 2)]),
        ];
        for (f, planes) in want {
            let info = f.info().unwrap();
            let got: Vec<_> = info
                .planes
                .iter()
                .map(|p| (p.bytes_per_pixel, p.hsub, p.vsub))
                .collect();
            assert_eq!(&got, planes, "{}", info.name);
        }
        // Plane sizes round up like drm_format_info_plane_width/height.
        let uv = Fourcc::NV12.info().unwrap().planes[1];
        assert_eq!((uv.width(1281), uv.height(721)), (641, 361));
        assert_eq!(uv.min_stride(1281), 1282);
        assert_eq!(
            Fourcc::P010.info().unwrap().planes[1].min_stride(1280),
            2560
        );
        assert_eq!(Fourcc::RGB888.info().unwrap().planes[0].alignment(), 1);
        assert_eq!(Fourcc::P010.info().unwrap().planes[0].alignment(), 2);
        assert_eq!(Fourcc::XRGB8888.info().unwrap().planes[0].alignment(), 4);
    }

    #[test]
    fn fourccs_print_as_four_characters_or_hex() {
        assert_eq!(Fourcc::NV12.to_string(), "NV12");
        assert_eq!(Fourcc::XRGB8888.to_string(), "XR24");
        assert_eq!(Fourcc::R8.to_string(), "R8  ");
        assert_eq!(Fourcc(0x0102_0304).to_string(), "0x01020304");
        assert_eq!(format!("{:?}", Fourcc::XRGB8888), "Fourcc(XRGB8888)");
        assert_eq!(
            format!("{:?}", Fourcc::from_bytes(*b"ZZZZ")),
            "Fourcc(ZZZZ)"
        );
    }

    #[test]
    fn fourccs_parse_by_name_or_code_in_any_case() {
        for f in Fourcc::known() {
            let name = f.name().unwrap();
            assert_eq!(name.parse::<Fourcc>().unwrap(), f);
            assert_eq!(name.to_lowercase().parse::<Fourcc>().unwrap(), f);
            assert_eq!(f.to_string().parse::<Fourcc>().unwrap(), f);
            assert_eq!(f.to_string().to_lowercase().parse::<Fourcc>().unwrap(), f);
        }
        assert_eq!("nv12".parse::<Fourcc>().unwrap(), Fourcc::NV12);
        assert_eq!("xr24".parse::<Fourcc>().unwrap(), Fourcc::XRGB8888);
        assert_eq!("yu12".parse::<Fourcc>().unwrap(), Fourcc::YUV420);
        for bad in ["", "NV1", "NV122", "ZZZZ", "MJPG", "\u{1F600}"] {
            let e = bad.parse::<Fourcc>().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("unknown pixel format"), "{e}");
            assert!(e.to_string().contains("NV12"), "lists known formats: {e}");
        }
    }

    #[test]
    fn codes_convert_to_and_from_the_drm_crate() {
        use ::drm::buffer::{DrmFourcc, DrmModifier};
        for f in Fourcc::known() {
            let d = DrmFourcc::try_from(f).unwrap();
            assert_eq!(Fourcc::from(d), f);
        }
        assert_eq!(DrmFourcc::try_from(Fourcc::NV12).unwrap(), DrmFourcc::Nv12);
        assert!(DrmFourcc::try_from(Fourcc::from_bytes(*b"ZZZZ")).is_err());
        assert_eq!(DrmModifier::from(Modifier::LINEAR), DrmModifier::Linear);
        assert_eq!(DrmModifier::from(Modifier::INVALID), DrmModifier::Invalid);
        let m = Modifier((1 << 56) | 1);
        assert_eq!(Modifier::from(DrmModifier::from(m)), m);
    }

    #[test]
    fn modifiers_print_by_vendor() {
        assert_eq!(Modifier::LINEAR.to_string(), "LINEAR");
        assert_eq!(Modifier::INVALID.to_string(), "INVALID");
        // I915_FORMAT_MOD_X_TILED = fourcc_mod_code(INTEL, 1).
        let x = Modifier((1 << 56) | 1);
        assert_eq!(x.vendor_name(), Some("INTEL"));
        assert_eq!(x.to_string(), "INTEL:0x1");
        assert_eq!(Modifier(0xee << 56).to_string(), "0xee00000000000000");
        assert!(Modifier::LINEAR.is_linear() && !x.is_linear());
    }
}
