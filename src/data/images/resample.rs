//! Pillow's `Image.resize` for 8-bit images, reproduced to the bit.
//!
//! torchvision's `Resize` on a PIL image calls `Image.resize`, so a model
//! trained or evaluated through torchvision saw exactly these pixels. Pillow
//! (libImaging/Resample.c) resizes in two separable passes, horizontal then
//! vertical, each rounding to 8 bits, with filter weights in fixed point
//! (22 fractional bits); the filter's support grows with the downscaling
//! factor, which is the antialiasing. Nearest neighbour goes through
//! Pillow's affine scaling instead (libImaging/Geometry.c), whose source
//! coordinates are accumulated in `f64` step by step. Each difference from
//! that arithmetic would show as off-by-one pixels, so it is kept as is.

/// How pixels between source samples are interpolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

impl Interpolation {
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        }
    }

    fn support(self) -> f64 {
        match self {
            Interpolation::Nearest => 0.0,
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Nearest => 0.0,
            Interpolation::Bilinear if x < 1.0 => 1.0 - x,
            Interpolation::Bilinear => 0.0,
            // Keys' cubic with a = -0.5, as Pillow uses.
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// An 8-bit image with interleaved channels (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Each output sample's first source sample and fixed-point weights.
struct Taps {
    /// Weights per output sample (unused ones zero).
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize, filter: Interpolation) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut taps = Taps {
        ksize,
        first: Vec::with_capacity(out_size),
        count: Vec::with_capacity(out_size),
        weights: vec![0; out_size * ksize],
    };
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; the clamp handles negatives.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut taps.weights[xx * ksize..(xx + 1) * ksize];
        for (x, w) in row.iter_mut().enumerate().take(xmax) {
            let normalised = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = normalised * f64::from(1u32 << PRECISION_BITS);
            *w = if normalised < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        taps.first.push(xmin);
        taps.count.push(xmax);
    }
    taps
}

fn clip8(sum: i32) -> u8 {
    if sum >= (1 << PRECISION_BITS << 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// The rounding term every sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `image` to `width` × `height` as Pillow's `Image.resize` does.
pub fn resize(image: &Image8, width: usize, height: usize, filter: Interpolation) -> Image8 {
    if filter == Interpolation::Nearest {
        return resize_nearest(image, width, height);
    }
    // Pillow skips a pass whose size does not change.
    let across = (width != image.width).then(|| horizontal(image, width, filter));
    let source = across.as_ref().unwrap_or(image);
    if height != source.height {
        vertical(source, height, filter)
    } else {
        across.unwrap_or_else(|| image.clone())
    }
}

// Sums are `i32` as in Pillow: 255 × the weights' absolute sum (at most
// about 1.3 × 2^22 for bicubic) stays far below 2^31.

fn horizontal(image: &Image8, width: usize, filter: Interpolation) -> Image8 {
    let taps = taps(image.width, width, filter);
    let c = image.channels;
    let mut out = vec![0u8; width * image.height * c];
    let in_stride = image.width * c;
    for (row, out_row) in image
        .pixels
        .chunks_exact(in_stride)
        .zip(out.chunks_exact_mut(width * c))
    {
        for xx in 0..width {
            let (first, count) = (taps.first[xx], taps.count[xx]);
            let k = &taps.weights[xx * taps.ksize..xx * taps.ksize + count];
            let source = &row[first * c..(first + count) * c];
            let target = &mut out_row[xx * c..(xx + 1) * c];
            if c == 3 {
                let mut sums = [HALF; 3];
                for (pixel, &w) in source.chunks_exact(3).zip(k) {
                    sums[0] += i32::from(pixel[0]) * w;
                    sums[1] += i32::from(pixel[1]) * w;
                    sums[2] += i32::from(pixel[2]) * w;
                }
                for (t, s) in target.iter_mut().zip(sums) {
                    *t = clip8(s);
                }
            } else {
                for (ch, t) in target.iter_mut().enumerate() {
                    let mut sum = HALF;
                    for (pixel, &w) in source.chunks_exact(c).zip(k) {
                        sum += i32::from(pixel[ch]) * w;
                    }
                    *t = clip8(sum);
                }
            }
        }
    }
    Image8 {
        width,
        height: image.height,
        channels: c,
        pixels: out,
    }
}

fn vertical(image: &Image8, height: usize, filter: Interpolation) -> Image8 {
    let taps = taps(image.height, height, filter);
    let stride = image.width * image.channels;
    let mut out = vec![0u8; height * stride];
    let mut sums = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (first, count) = (taps.first[yy], taps.count[yy]);
        let k = &taps.weights[yy * taps.ksize..yy * taps.ksize + count];
        sums.fill(HALF);
        // Row by row, so the inner loop runs along contiguous memory.
        for (y, &w) in k.iter().enumerate() {
            let row = &image.pixels[(first + y) * stride..(first + y + 1) * stride];
            for (s, &p) in sums.iter_mut().zip(row) {
                *s += i32::from(p) * w;
            }
        }
        for (o, &s) in out_row.iter_mut().zip(&sums) {
            *o = clip8(s);
        }
    }
    Image8 {
        width: image.width,
        height,
        channels: image.channels,
        pixels: out,
    }
}

/// Pillow's `ImagingScaleAffine`: source coordinates start half a step in
/// and are accumulated, not multiplied, exactly as there.
fn resize_nearest(image: &Image8, width: usize, height: usize) -> Image8 {
    let coordinates = |in_size: usize, out_size: usize| -> Vec<usize> {
        let step = in_size as f64 / out_size as f64;
        let mut at = step * 0.5;
        (0..out_size)
            .map(|_| {
                let index = (at as usize).min(in_size - 1);
                at += step;
                index
            })
            .collect()
    };
    let xs = coordinates(image.width, width);
    let ys = coordinates(image.height, height);
    let c = image.channels;
    let mut out = Vec::with_capacity(width * height * c);
    for &y in &ys {
        for &x in &xs {
            let at = (y * image.width + x) * c;
            out.extend_from_slice(&image.pixels[at..at + c]);
        }
    }
    Image8 {
        width,
        height,
        channels: c,
        pixels: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_of_every_output_sample_sum_to_one_in_fixed_point() {
        for (from, to) in [(500, 256), (256, 224), (7, 13), (1000, 3)] {
            for filter in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let t = taps(from, to, filter);
                for xx in 0..to {
                    let sum: i64 = t.weights[xx * t.ksize..(xx + 1) * t.ksize]
                        .iter()
                        .map(|&w| i64::from(w))
                        .sum();
                    // Rounding each weight moves the sum by at most half a
                    // unit per weight.
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= t.ksize as i64,
                        "{from}->{to} {filter:?}: {sum}"
                    );
                    assert!(t.first[xx] + t.count[xx] <= from);
                }
            }
        }
    }

    #[test]
    fn a_constant_image_stays_constant() {
        let image = Image8 {
            width: 37,
            height: 23,
            channels: 3,
            pixels: vec![201; 37 * 23 * 3],
        };
        for filter in [
            Interpolation::Nearest,
            Interpolation::Bilinear,
            Interpolation::Bicubic,
        ] {
            let out = resize(&image, 11, 50, filter);
            assert_eq!((out.width, out.height), (11, 50));
            assert!(out.pixels.iter().all(|&p| p == 201), "{filter:?}");
        }
    }
}
