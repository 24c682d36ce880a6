//! Pooling: MaxPool routes each output's gradient to its argmax (scatter-add,
//! so overlapping windows accumulate); average pools spread it evenly.

use super::conv::{conv_geometry, transpose_back};
use super::{fail, only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::{attr_int, attr_string};
use crate::onnx::grad::specialise::PoolSite;

type Grads = Result<Vec<Option<String>>>;

/// MaxPool with its Indices output (added by `prepare_forward`): indices are
/// flat over N·C·H·W, so `Mod(idx, H·W)` gives the position in the sample's
/// channel, and ScatterElements adds the gradients there.
pub fn max_pool(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    if ctx.int_attr("storage_order", 0) != 0 {
        return fail("MaxPool with column-major storage_order is not supported");
    }
    let x = ctx.input(0).to_string();
    let indices = ctx.output(1).to_string();
    let spatial: usize = ctx.shape(&x)?.dims[2..].iter().product();
    let plane = ctx.emit.const_i64(&[], &[spatial as i64]);
    let within = ctx.emit.binary("Mod", &indices, &plane);
    let flat_shape = ctx.emit.ints(&[0, 0, -1]);
    let flat_indices = ctx.emit.binary("Reshape", &within, &flat_shape);
    let flat_g = ctx.emit.binary("Reshape", &g, &flat_shape);
    let zeros = ctx.emit.zeros_like(&x);
    let flat_zeros = ctx.emit.binary("Reshape", &zeros, &flat_shape);
    let scattered = ctx.emit.op(
        "ScatterElements",
        &[&flat_zeros, &flat_indices, &flat_g],
        vec![attr_int("axis", 2), attr_string("reduction", "add")],
    );
    let dx = ctx.emit.reshape_like(&scattered, &x);
    if let Some(site) = pool_site(ctx, &dx, &g, &indices)? {
        ctx.emit.pool_sites.push(site);
    }
    Ok(only_first(dx))
}

/// A MaxPool's backward, which ONNX Runtime can run as one fused
/// kernel (2-D), or as `MaxUnpool` where the windows do not overlap (strides ≥
/// kernel, no dilation, floor mode) (`grad/specialise/`).
fn pool_site(ctx: &Ctx, dx: &str, g: &str, indices: &str) -> Result<Option<PoolSite>> {
    let kernel: Vec<usize> = match ctx.ints_attr("kernel_shape") {
        Some(k) if !k.is_empty() => k.iter().map(|&v| v as usize).collect(),
        _ => return Ok(None),
    };
    let x = ctx.input(0);
    let x_shape = ctx.shape(x)?.dims.clone();
    let y_shape = ctx.shape(ctx.output(0))?.dims.clone();
    let geo = conv_geometry(ctx, kernel.clone(), &x_shape[2..], &y_shape[2..])?;
    let disjoint = geo.strides.iter().zip(&kernel).all(|(s, k)| s >= k)
        && geo.dilations.iter().all(|&d| d == 1)
        && ctx.int_attr("ceil_mode", 0) == 0;
    let ints = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
    Ok(Some(PoolSite {
        output: dx.to_string(),
        grad: g.to_string(),
        indices: indices.to_string(),
        input: x.to_string(),
        kernel: ints(&kernel),
        strides: ints(&geo.strides),
        pads: ints(&[geo.pads_begin.clone(), geo.pads_end.clone()].concat()),
        dilations: ints(&geo.dilations),
        disjoint,
    }))
}

/// AveragePool: scale each output's gradient by 1/(cells it averaged), then
/// spread it over its window with a depthwise ConvTranspose of ones.
pub fn average_pool(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let x_shape = ctx.shape(&x)?.dims.clone();
    let y_shape = ctx.shape(ctx.output(0))?.dims.clone();
    let kernel: Vec<usize> = match ctx.ints_attr("kernel_shape") {
        Some(k) if !k.is_empty() => k.iter().map(|&v| v as usize).collect(),
        _ => return fail("AveragePool without kernel_shape"),
    };
    let geo = conv_geometry(ctx, kernel.clone(), &x_shape[2..], &y_shape[2..])?;
    if geo.dilations.iter().any(|&d| d != 1) {
        return fail("dilated AveragePool is not supported");
    }
    let include_pad = ctx.int_attr("count_include_pad", 0) != 0;
    // Divisor per output position, axis by axis (windows are boxes).
    let per_axis: Vec<Vec<f32>> = (0..kernel.len())
        .map(|a| {
            let (size, pad_b, pad_e) = (
                x_shape[2 + a] as i64,
                geo.pads_begin[a] as i64,
                geo.pads_end[a] as i64,
            );
            let (low, high) = if include_pad {
                (-pad_b, size + pad_e)
            } else {
                (0, size)
            };
            (0..y_shape[2 + a] as i64)
                .map(|o| {
                    let start = o * geo.strides[a] as i64 - pad_b;
                    let end = start + kernel[a] as i64;
                    (end.min(high) - start.max(low)).max(1) as f32
                })
                .collect()
        })
        .collect();
    let mut inverse_counts = vec![1.0f32];
    for axis in &per_axis {
        inverse_counts = inverse_counts
            .iter()
            .flat_map(|&c| axis.iter().map(move |&n| c / n))
            .collect();
    }
    let mut map_dims = vec![1i64, 1];
    map_dims.extend(y_shape[2..].iter().map(|&d| d as i64));
    let scale = ctx.emit.const_f32(&map_dims, &inverse_counts);
    let scaled = ctx.emit.binary("Mul", &g, &scale);
    let channels = x_shape[1];
    let mut w_dims = vec![channels as i64, 1];
    w_dims.extend(kernel.iter().map(|&k| k as i64));
    let ones = ctx.emit.const_f32(
        &w_dims,
        &vec![1.0; channels * kernel.iter().product::<usize>()],
    );
    Ok(only_first(transpose_back(
        ctx,
        &scaled,
        &ones,
        &geo,
        &x_shape,
        &y_shape,
        channels as i64,
    )))
}

/// GlobalAveragePool: g/(H·W) broadcast over the plane.
pub fn global_average_pool(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let plane: usize = ctx.shape(&x)?.dims[2..].iter().product();
    let inverse = ctx.emit.scalar_f32(1.0 / plane as f32);
    let scaled = ctx.emit.binary("Mul", &g, &inverse);
    let shape = ctx.emit.shape_of(&x);
    Ok(only_first(ctx.emit.binary("Expand", &scaled, &shape)))
}

/// GlobalMaxPool: g where x equals its plane's maximum.
pub fn global_max_pool(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let is_max = ctx.emit.binary("Equal", &x, ctx.output(0));
    let shape = ctx.emit.shape_of(&x);
    let spread = ctx.emit.binary("Expand", &g, &shape);
    Ok(only_first(ctx.emit.mask(&is_max, &spread)))
}
