//! `--transform`: the preprocessing between a decoded image and the model,
//! with torchvision's semantics on PIL images (its `Resize`, `CenterCrop`
//! and `ToTensor`), named as RobustBench names its ImageNet preprocessings.

use super::resample::{resize, Image8, Interpolation};
use crate::error::{Error, Result};

/// How `Resize` is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// `Resize(N)`: the shorter side to N, the longer in proportion.
    Shorter(usize),
    /// `Resize([H, W])`: exactly this size, aspect ratio ignored.
    Exact { height: usize, width: usize },
}

/// Resize, then centre crop, then channels-first floats in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub resize: Option<Resize>,
    /// `CenterCrop([H, W])`.
    pub crop: Option<(usize, usize)>,
    pub interpolation: Interpolation,
    /// 3 (PIL's `convert("RGB")`) or 1 (`convert("L")`).
    pub channels: usize,
}

/// The presets `--transform` knows, with what each stands for.
pub const PRESETS: [(&str, &str); 5] = [
    (
        "res256-crop224",
        "Resize(256) bilinear, CenterCrop(224): torchvision's ImageNet evaluation",
    ),
    (
        "bicubic-res256-crop224",
        "Resize(256) bicubic, CenterCrop(224)",
    ),
    ("res224", "Resize([224, 224]) bilinear, no crop"),
    ("crop288", "CenterCrop(288), no resize"),
    (
        "none",
        "the image as decoded (all images must share a size)",
    ),
];

/// The `--transform` forms, for help texts and messages.
pub const TRANSFORM_FORMS: &str = "a preset (res256-crop224, bicubic-res256-crop224, res224, crop288, none) \
     and/or resize=N|HxW, crop=N|HxW, interpolation=bilinear|bicubic|nearest, channels=3|1, comma-separated";

impl Default for Transform {
    fn default() -> Self {
        Transform {
            resize: None,
            crop: None,
            interpolation: Interpolation::Bilinear,
            channels: 3,
        }
    }
}

impl std::str::FromStr for Transform {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad =
            |why: String| Error::Usage(format!("--transform {text}: {why}; use {TRANSFORM_FORMS}"));
        let mut t = Transform::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                None => match item {
                    "res256-crop224" => {
                        t.resize = Some(Resize::Shorter(256));
                        t.crop = Some((224, 224));
                    }
                    "bicubic-res256-crop224" => {
                        t.resize = Some(Resize::Shorter(256));
                        t.crop = Some((224, 224));
                        t.interpolation = Interpolation::Bicubic;
                    }
                    "res224" => {
                        t.resize = Some(Resize::Exact {
                            height: 224,
                            width: 224,
                        })
                    }
                    "crop288" => t.crop = Some((288, 288)),
                    "none" => {}
                    _ => return Err(bad(format!("unknown preset `{item}`"))),
                },
                Some((key, value)) => match key.trim() {
                    "resize" => {
                        t.resize = Some(match size_pair(value).map_err(&bad)? {
                            (n, None) => Resize::Shorter(n),
                            (height, Some(width)) => Resize::Exact { height, width },
                        })
                    }
                    "crop" => {
                        let (h, w) = size_pair(value).map_err(&bad)?;
                        t.crop = Some((h, w.unwrap_or(h)));
                    }
                    "interpolation" => {
                        t.interpolation = match value.trim() {
                            "bilinear" => Interpolation::Bilinear,
                            "bicubic" => Interpolation::Bicubic,
                            "nearest" => Interpolation::Nearest,
                            other => return Err(bad(format!("unknown interpolation `{other}`"))),
                        }
                    }
                    "channels" => {
                        t.channels = match value.trim() {
                            "3" => 3,
                            "1" => 1,
                            other => {
                                return Err(bad(format!(
                                    "channels={other}: give 3 (RGB) or 1 (grey)"
                                )))
                            }
                        }
                    }
                    other => return Err(bad(format!("unknown setting `{other}`"))),
                },
            }
        }
        Ok(t)
    }
}

/// `N` or `HxW`, each between 1 and 16384.
fn size_pair(value: &str) -> std::result::Result<(usize, Option<usize>), String> {
    let side = |s: &str| -> std::result::Result<usize, String> {
        match s.trim().parse::<usize>() {
            Ok(n) if (1..=16384).contains(&n) => Ok(n),
            _ => Err(format!("`{s}` is not a size between 1 and 16384")),
        }
    };
    match value.split_once(['x', 'X']) {
        Some((h, w)) => Ok((side(h)?, Some(side(w)?))),
        None => Ok((side(value)?, None)),
    }
}

impl std::fmt::Display for Transform {
    /// The explicit form, which parses back to the same transform.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let mut parts = Vec::new();
        match self.resize {
            Some(Resize::Shorter(n)) => parts.push(format!("resize={n}")),
            Some(Resize::Exact { height, width }) => parts.push(format!("resize={height}x{width}")),
            None => {}
        }
        if let Some((h, w)) = self.crop {
            parts.push(format!("crop={h}x{w}"));
        }
        if self.resize.is_some() {
            parts.push(format!("interpolation={}", self.interpolation.name()));
        }
        parts.push(format!("channels={}", self.channels));
        write!(f, "{}", parts.join(","))
    }
}

impl Transform {
    /// The `[C, H, W]` every image comes out with, when the transform fixes
    /// it (a crop, or an exact resize); `None` when it depends on the image.
    pub fn output_shape(&self) -> Option<[usize; 3]> {
        match (self.crop, self.resize) {
            (Some((h, w)), _) => Some([self.channels, h, w]),
            (None, Some(Resize::Exact { height, width })) => Some([self.channels, height, width]),
            _ => None,
        }
    }

    /// Applies resize and crop to a decoded image of this transform's
    /// channel count.
    pub fn apply(&self, image: Image8) -> Image8 {
        let mut image = image;
        if let Some(resize_to) = self.resize {
            let (height, width) = resized_size(image.height, image.width, resize_to);
            // torchvision returns the image untouched when the size is met.
            if (height, width) != (image.height, image.width) {
                image = resize(&image, width, height, self.interpolation);
            }
        }
        if let Some((h, w)) = self.crop {
            image = center_crop(image, h, w);
        }
        image
    }
}

/// torchvision's `_compute_resized_output_size` without `max_size`.
fn resized_size(height: usize, width: usize, resize: Resize) -> (usize, usize) {
    match resize {
        Resize::Exact { height, width } => (height, width),
        Resize::Shorter(n) => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            // Python: int(n * long / short), a true division then truncation.
            let new_long = ((n * long) as f64 / short as f64) as usize;
            if width <= height {
                (new_long, n)
            } else {
                (n, new_long)
            }
        }
    }
}

/// Python's `round(d / 2.0)` for a non-negative integer `d`: halves go to
/// the even neighbour.
fn half_rounded_even(d: usize) -> usize {
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// torchvision's `center_crop`: zero padding (split as it splits it) when
/// the crop is larger than the image, then the crop at the rounded centre.
fn center_crop(image: Image8, crop_h: usize, crop_w: usize) -> Image8 {
    let image = if crop_w > image.width || crop_h > image.height {
        let left = crop_w.saturating_sub(image.width) / 2;
        let top = crop_h.saturating_sub(image.height) / 2;
        let right = crop_w.saturating_sub(image.width).div_ceil(2);
        let bottom = crop_h.saturating_sub(image.height).div_ceil(2);
        pad(&image, top, left, bottom, right)
    } else {
        image
    };
    if (image.height, image.width) == (crop_h, crop_w) {
        return image;
    }
    let top = half_rounded_even(image.height - crop_h);
    let left = half_rounded_even(image.width - crop_w);
    let c = image.channels;
    let mut out = Vec::with_capacity(crop_h * crop_w * c);
    for y in top..top + crop_h {
        let at = (y * image.width + left) * c;
        out.extend_from_slice(&image.pixels[at..at + crop_w * c]);
    }
    Image8 {
        width: crop_w,
        height: crop_h,
        channels: c,
        pixels: out,
    }
}

fn pad(image: &Image8, top: usize, left: usize, bottom: usize, right: usize) -> Image8 {
    let c = image.channels;
    let width = image.width + left + right;
    let height = image.height + top + bottom;
    let mut out = vec![0u8; width * height * c];
    for y in 0..image.height {
        let from = &image.pixels[y * image.width * c..(y + 1) * image.width * c];
        let at = ((y + top) * width + left) * c;
        out[at..at + from.len()].copy_from_slice(from);
    }
    Image8 {
        width,
        height,
        channels: c,
        pixels: out,
    }
}

/// `ToTensor`: HWC bytes to CHW floats, each byte divided by 255 in `f32`.
pub fn to_chw_floats(image: &Image8, out: &mut Vec<f32>) {
    let (c, plane) = (image.channels, image.width * image.height);
    out.reserve(c * plane);
    for ch in 0..c {
        out.extend(
            image.pixels[ch..]
                .iter()
                .step_by(c)
                .take(plane)
                .map(|&v| f32::from(v) / 255.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_explicit_forms_parse_and_print_back() {
        let t: Transform = "res256-crop224".parse().unwrap();
        assert_eq!(t.resize, Some(Resize::Shorter(256)));
        assert_eq!(t.crop, Some((224, 224)));
        assert_eq!(t.output_shape(), Some([3, 224, 224]));
        let t: Transform = "bicubic-res256-crop224,channels=1".parse().unwrap();
        assert_eq!((t.interpolation, t.channels), (Interpolation::Bicubic, 1));
        assert_eq!(t.to_string().parse::<Transform>().unwrap(), t);
        let t: Transform = "resize=32x48,interpolation=nearest".parse().unwrap();
        assert_eq!(t.output_shape(), Some([3, 32, 48]));
        assert_eq!(t.to_string().parse::<Transform>().unwrap(), t);
        assert_eq!("none".parse::<Transform>().unwrap().output_shape(), None);
        for bad in [
            "crop=0",
            "resize=abc",
            "res999",
            "interpolation=lanczos",
            "channels=4",
            "crop=99999",
        ] {
            let err = bad.parse::<Transform>().unwrap_err().to_string();
            assert!(err.contains("--transform"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_and_crop_offsets_follow_torchvisions_rounding() {
        // Python: int(256 * 500 / 375) = 341.
        assert_eq!(resized_size(375, 500, Resize::Shorter(256)), (256, 341));
        assert_eq!(resized_size(500, 333, Resize::Shorter(256)), (384, 256));
        // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4.
        assert_eq!([1, 3, 5, 7, 8].map(half_rounded_even), [0, 2, 2, 4, 4]);
    }

    #[test]
    fn a_crop_larger_than_the_image_pads_with_zeros_as_torchvision() {
        let image = Image8 {
            width: 1,
            height: 1,
            channels: 1,
            pixels: vec![9],
        };
        let out = center_crop(image, 2, 4);
        // left (4-1)//2 = 1, top (2-1)//2 = 0.
        assert_eq!(out.pixels, [0, 9, 0, 0, 0, 0, 0, 0]);
    }
}
