//! Resize: along each resized axis the op is a fixed linear map, an
//! `[out, in]` matrix of interpolation weights that follows from the sizes,
//! the scale, the mode and the coordinate transformation (ONNX's
//! definition, as ONNX Runtime computes it). The gradient multiplies g by
//! that matrix's transpose, axis by axis. Nearest integer up-scaling keeps
//! its cheaper block sum.

use super::{fail, only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::attr_ints;

type Grads = Result<Vec<Option<String>>>;

/// How output coordinates map to input coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transform {
    HalfPixel,
    /// half_pixel, shifted to keep the image centred when the output size
    /// was rounded (opset 19).
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    /// The axis's region of interest `[start, end]` (fractions of the
    /// input) stretched over the output; outputs whose source falls
    /// outside the input take `extrapolation_value`, a constant.
    TfCropAndResize(f32, f32),
}

/// What decides each output element.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// `nearest_mode`: round_prefer_floor, round_prefer_ceil, floor, ceil.
    Nearest(Rounding),
    Linear,
    /// `cubic_coeff_a`, `exclude_outside`.
    Cubic(f32, bool),
    /// Linear or cubic with `antialias`: the filter stretched by 1/scale
    /// when shrinking (ONNX Runtime's, after Pillow's); `exclude_outside`.
    Antialiased(Box<Mode>, bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rounding {
    PreferFloor,
    PreferCeil,
    Floor,
    Ceil,
}

pub fn resize(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    if let Ok(block_sum) = super::shape::resize(ctx, grads) {
        return Ok(block_sum);
    }
    let g = ctx.grad(grads)?;
    let (mode, transform) = settings(ctx)?;
    let x = ctx.shape(ctx.input(0))?.clone();
    let y = ctx.shape(ctx.output(0))?.clone();
    let scales = axis_scales(ctx, &x.dims, &y.dims)?;
    let rank = x.rank();
    let regions = match transform {
        // By scales, the output size of a cropping Resize is ambiguous: ONNX's
        // text says input·(end − start)·scale, ONNX Runtime computes
        // input·scale, and ONNX's shape inference a third size.
        Transform::TfCropAndResize(..) if ctx.input(3).is_empty() => {
            return fail("Resize tf_crop_and_resize is differentiated when given sizes, not scales")
        }
        Transform::TfCropAndResize(..) => Some(regions_of_interest(ctx, rank)?),
        _ => None,
    };
    let mut g = g;
    for (axis, &scale) in scales.iter().enumerate() {
        let (size_in, size_out) = (x.dims[axis], y.dims[axis]);
        let transform = match &regions {
            Some(roi) => Transform::TfCropAndResize(roi[axis].0, roi[axis].1),
            None => transform,
        };
        let whole = !matches!(transform, Transform::TfCropAndResize(a, b) if (a, b) != (0.0, 1.0));
        if size_in == size_out && scale == 1.0 && whole {
            continue;
        }
        if x.dynamic[axis] {
            return fail("Resize along the batch axis is not supported");
        }
        let weights = interpolation_matrix(size_in, size_out, scale, &mode, transform);
        let matrix = ctx
            .emit
            .const_f32(&[size_out as i64, size_in as i64], &weights);
        // Bring the axis last, contract it with the matrix, put it back.
        let mut perm: Vec<i64> = (0..rank as i64).collect();
        perm.swap(axis, rank - 1);
        let last = if axis == rank - 1 {
            g
        } else {
            ctx.emit
                .op("Transpose", &[&g], vec![attr_ints("perm", &perm)])
        };
        let contracted = ctx.emit.binary("MatMul", &last, &matrix);
        g = if axis == rank - 1 {
            contracted
        } else {
            ctx.emit
                .op("Transpose", &[&contracted], vec![attr_ints("perm", &perm)])
        };
    }
    Ok(only_first(g))
}

fn settings(ctx: &Ctx) -> Result<(Mode, Transform)> {
    if ctx.string_attr("keep_aspect_ratio_policy", "stretch") != "stretch" {
        return fail("Resize with a keep_aspect_ratio_policy other than stretch is not supported");
    }
    let transform = match ctx
        .string_attr("coordinate_transformation_mode", "half_pixel")
        .as_str()
    {
        "half_pixel" => Transform::HalfPixel,
        "half_pixel_symmetric" => Transform::HalfPixelSymmetric,
        "tf_crop_and_resize" => Transform::TfCropAndResize(0.0, 1.0),
        "pytorch_half_pixel" => Transform::PytorchHalfPixel,
        "align_corners" => Transform::AlignCorners,
        "asymmetric" => Transform::Asymmetric,
        other => {
            return fail(format!(
                "Resize with coordinate_transformation_mode {other} is not supported"
            ))
        }
    };
    let mode = match ctx.string_attr("mode", "nearest").as_str() {
        "nearest" => Mode::Nearest(
            match ctx
                .string_attr("nearest_mode", "round_prefer_floor")
                .as_str()
            {
                "round_prefer_floor" => Rounding::PreferFloor,
                "round_prefer_ceil" => Rounding::PreferCeil,
                "floor" => Rounding::Floor,
                "ceil" => Rounding::Ceil,
                other => return fail(format!("Resize with nearest_mode {other}")),
            },
        ),
        "linear" => Mode::Linear,
        "cubic" => Mode::Cubic(
            ctx.float_attr("cubic_coeff_a", -0.75),
            ctx.int_attr("exclude_outside", 0) != 0,
        ),
        other => return fail(format!("Resize with mode {other} is not supported")),
    };
    // Antialiasing (opset 18) widens linear and cubic filters by 1/scale
    // when shrinking; nearest ignores it.
    let mode = match mode {
        Mode::Linear | Mode::Cubic(..) if ctx.int_attr("antialias", 0) != 0 => {
            if matches!(transform, Transform::TfCropAndResize(..)) {
                return fail("Resize tf_crop_and_resize with antialias is not supported");
            }
            // ONNX Runtime and ONNX's reference implementation compute
            // different images here: no gradient can match both.
            if transform == Transform::AlignCorners {
                return fail("Resize align_corners with antialias is not supported (runtimes disagree on its values)");
            }
            Mode::Antialiased(Box::new(mode), ctx.int_attr("exclude_outside", 0) != 0)
        }
        mode => mode,
    };
    Ok((mode, transform))
}

/// The scale of every axis: from the `scales` input when given (it, not
/// out/in, enters the coordinate transformation), else out/in.
fn axis_scales(ctx: &Ctx, x: &[usize], y: &[usize]) -> Result<Vec<f32>> {
    let rank = x.len();
    let mut scales: Vec<f32> = x
        .iter()
        .zip(y)
        .map(|(&i, &o)| o as f32 / i as f32)
        .collect();
    // Inputs (X, roi, scales, sizes): the gradient graph needs opset 13+.
    let scales_input = 2;
    let given_sizes = !ctx.input(3).is_empty();
    if given_sizes || ctx.input(scales_input).is_empty() {
        return Ok(scales);
    }
    let given = ctx
        .constants
        .floats(ctx.input(scales_input))
        .filter(|v| !v.is_empty());
    let Some(given) = given else {
        return fail("Resize with scales computed at run time is not supported");
    };
    let axes = resized_axes(ctx, rank);
    if given.len() != axes.len() {
        return fail("Resize scales do not match its axes");
    }
    for (&axis, &scale) in axes.iter().zip(&given) {
        scales[axis] = scale;
    }
    Ok(scales)
}

/// The axes `scales`, `sizes` and `roi` speak of: the `axes` attribute
/// (opset 18, negative ones counted from the end), else all of them.
fn resized_axes(ctx: &Ctx, rank: usize) -> Vec<usize> {
    match ctx.ints_attr("axes") {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&a| {
                if a < 0 {
                    (a + rank as i64) as usize
                } else {
                    a as usize
                }
            })
            .collect(),
        _ => (0..rank).collect(),
    }
}

/// The `(start, end)` of every axis from the constant `roi` input
/// (`[starts..., ends...]` over all axes, or over `axes`); whole axes elsewhere.
fn regions_of_interest(ctx: &Ctx, rank: usize) -> Result<Vec<(f32, f32)>> {
    let Some(roi) = ctx.constants.floats(ctx.input(1)).filter(|v| !v.is_empty()) else {
        return fail("Resize tf_crop_and_resize needs a constant roi");
    };
    let axes = resized_axes(ctx, rank);
    if roi.len() != 2 * axes.len() {
        return fail("Resize roi does not match its axes");
    }
    let mut regions = vec![(0.0, 1.0); rank];
    for (k, &axis) in axes.iter().enumerate() {
        regions[axis] = (roi[k], roi[axes.len() + k]);
    }
    Ok(regions)
}

/// The input coordinate of output index `out` (ONNX's definitions, with
/// ONNX Runtime's reading of half_pixel_symmetric).
fn source(out: usize, size_in: usize, size_out: usize, scale: f32, t: Transform) -> f32 {
    let (out, size_in, size_out) = (out as f32, size_in as f32, size_out as f32);
    match t {
        Transform::HalfPixel => (out + 0.5) / scale - 0.5,
        Transform::HalfPixelSymmetric => {
            let adjustment = size_out / (scale * size_in);
            let offset = size_in / 2.0 * (1.0 - adjustment);
            offset + (out + 0.5) / scale - 0.5
        }
        Transform::TfCropAndResize(start, end) if size_out > 1.0 => {
            start * (size_in - 1.0) + out * (end - start) * (size_in - 1.0) / (size_out - 1.0)
        }
        Transform::TfCropAndResize(start, end) => 0.5 * (start + end) * (size_in - 1.0),
        Transform::PytorchHalfPixel if size_out > 1.0 => (out + 0.5) / scale - 0.5,
        Transform::PytorchHalfPixel => 0.0,
        Transform::AlignCorners if size_out > 1.0 => out * (size_in - 1.0) / (size_out - 1.0),
        Transform::AlignCorners => 0.0,
        Transform::Asymmetric => out / scale,
    }
}

/// Row-major `[size_out, size_in]` weights: output `o` = Σ_i w[o, i]·x[i].
fn interpolation_matrix(
    size_in: usize,
    size_out: usize,
    scale: f32,
    mode: &Mode,
    transform: Transform,
) -> Vec<f32> {
    let mut weights = vec![0.0f32; size_out * size_in];
    let last = size_in as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    for o in 0..size_out {
        let row = &mut weights[o * size_in..(o + 1) * size_in];
        let x = source(o, size_in, size_out, scale, transform);
        if matches!(transform, Transform::TfCropAndResize(..)) && !(0.0..=last as f32).contains(&x)
        {
            continue; // extrapolation_value: a constant, no gradient
        }
        match mode {
            Mode::Nearest(rounding) => {
                let fraction = x - x.floor();
                let i = match rounding {
                    Rounding::PreferFloor if fraction == 0.5 => x.floor(),
                    Rounding::PreferCeil if fraction == 0.5 => x.ceil(),
                    Rounding::PreferFloor | Rounding::PreferCeil => x.round(),
                    Rounding::Floor => x.floor(),
                    Rounding::Ceil => x.ceil(),
                };
                row[clamp(i as i64)] = 1.0;
            }
            Mode::Linear => {
                // Coordinates outside the input stick to its edge.
                let x = x.clamp(0.0, last as f32);
                let i0 = x.floor() as i64;
                let i1 = (i0 + 1).min(last);
                let w1 = x - i0 as f32;
                row[clamp(i0)] += 1.0 - w1;
                row[clamp(i1)] += w1;
            }
            Mode::Antialiased(filter, exclude_outside) => {
                antialiased_row(row, x, scale, filter, *exclude_outside)
            }
            &Mode::Cubic(a, exclude_outside) => {
                let i0 = x.floor() as i64;
                let t = x - i0 as f32;
                let taps = cubic_weights(t, a);
                let mut kept = 0.0;
                for (k, w) in taps.iter().enumerate() {
                    let i = i0 - 1 + k as i64;
                    if exclude_outside && !(0..=last).contains(&i) {
                        continue;
                    }
                    kept += w;
                    row[clamp(i)] += w;
                }
                if exclude_outside && kept != 0.0 {
                    row.iter_mut().for_each(|w| *w /= kept);
                }
            }
        }
    }
    weights
}

/// One output's weights under antialiasing: the filter centred on the
/// source coordinate `x`, stretched by 1/scale when shrinking, normalised
/// to sum to one. Taps outside the input are dropped with
/// `exclude_outside`, else they count for the edge element.
fn antialiased_row(row: &mut [f32], x: f32, scale: f32, filter: &Mode, exclude_outside: bool) {
    let (half_support, kernel): (f32, Box<dyn Fn(f32) -> f32>) = match *filter {
        Mode::Cubic(a, _) => (2.0, Box::new(move |d: f32| cubic_kernel(d.abs(), a))),
        _ => (1.0, Box::new(|d: f32| (1.0 - d.abs()).max(0.0))),
    };
    let stretch = (1.0 / scale).max(1.0);
    let support = half_support * stretch;
    let center = x + 0.5;
    let first = (center - support + 0.5).floor() as i64;
    let end = (center + support + 0.5).floor() as i64;
    let last = row.len() as i64 - 1;
    let mut total = 0.0;
    for i in first..end {
        if exclude_outside && !(0..=last).contains(&i) {
            continue;
        }
        let w = kernel((i as f32 - center + 0.5) / stretch);
        row[i.clamp(0, last) as usize] += w;
        total += w;
    }
    if total != 0.0 {
        row.iter_mut().for_each(|w| *w /= total);
    }
}

/// Keys' cubic kernel at distance `d` ≥ 0.
fn cubic_kernel(d: f32, a: f32) -> f32 {
    if d < 1.0 {
        ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    } else if d < 2.0 {
        ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    } else {
        0.0
    }
}

/// Keys' cubic convolution weights of the taps at −1, 0, 1, 2 from floor(x).
fn cubic_weights(t: f32, a: f32) -> [f32; 4] {
    let far = |d: f32| ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a;
    let near = |d: f32| ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_sum_to_one(w: &[f32], size_in: usize) {
        for row in w.chunks(size_in) {
            let total: f32 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "{row:?}");
        }
    }

    #[test]
    fn interpolation_weights_are_partitions_of_one() {
        for mode in [
            Mode::Nearest(Rounding::PreferFloor),
            Mode::Linear,
            Mode::Cubic(-0.75, false),
            Mode::Cubic(-0.5, true),
        ] {
            for t in [
                Transform::HalfPixel,
                Transform::AlignCorners,
                Transform::Asymmetric,
            ] {
                for (i, o) in [(4, 8), (8, 3), (5, 7), (1, 4)] {
                    rows_sum_to_one(
                        &interpolation_matrix(i, o, o as f32 / i as f32, &mode, t),
                        i,
                    );
                }
            }
        }
    }

    #[test]
    fn linear_half_pixel_doubling_matches_the_textbook_weights() {
        // Output 1 of 4 -> 8 sits at input 0.25: 0.75·x0 + 0.25·x1.
        let w = interpolation_matrix(4, 8, 2.0, &Mode::Linear, Transform::HalfPixel);
        assert_eq!(&w[4..8], &[0.75, 0.25, 0.0, 0.0]);
        // Output 0 sits at −0.25, clamped to the edge.
        assert_eq!(&w[0..4], &[1.0, 0.0, 0.0, 0.0]);
    }
}
