//! Conv and ConvTranspose, each the other's adjoint.

use super::{fail, only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::{attr_int, attr_ints, attr_string};

type Grads = Result<Vec<Option<String>>>;

/// Kernel geometry of a convolution, per spatial axis.
pub(super) struct Geometry {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads_begin: Vec<usize>,
    pub pads_end: Vec<usize>,
}

/// Reads strides, dilations and explicit pads (resolving auto_pad) of a Conv
/// whose input has spatial sizes `input` and output `output`.
pub(super) fn conv_geometry(
    ctx: &Ctx,
    kernel: Vec<usize>,
    input: &[usize],
    output: &[usize],
) -> Result<Geometry> {
    let spatial = kernel.len();
    let read = |name: &str, default: usize| -> Vec<usize> {
        ctx.ints_attr(name)
            .filter(|v| !v.is_empty())
            .map_or(vec![default; spatial], |v| {
                v.iter().map(|&x| x as usize).collect()
            })
    };
    let (strides, dilations) = (read("strides", 1), read("dilations", 1));
    let auto_pad = ctx.string_attr("auto_pad", "NOTSET");
    let (pads_begin, pads_end) = match auto_pad.as_str() {
        "NOTSET" => {
            let pads = read("pads", 0);
            let pads = if pads.len() == 2 * spatial {
                pads
            } else {
                vec![0; 2 * spatial]
            };
            (pads[..spatial].to_vec(), pads[spatial..].to_vec())
        }
        "VALID" => (vec![0; spatial], vec![0; spatial]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut begin = Vec::new();
            let mut end = Vec::new();
            for a in 0..spatial {
                let needed = (output[a] - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1;
                let total = needed.saturating_sub(input[a]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    begin.push(small);
                    end.push(total - small);
                } else {
                    begin.push(total - small);
                    end.push(small);
                }
            }
            (begin, end)
        }
        other => return fail(format!("auto_pad {other} is not supported")),
    };
    Ok(Geometry {
        kernel,
        strides,
        dilations,
        pads_begin,
        pads_end,
    })
}

/// Conv: dx = ConvTranspose(g, W) with the same geometry, sized back to x.
pub fn conv(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let (x, w) = (ctx.input(0).to_string(), ctx.input(1).to_string());
    let x_shape = ctx.shape(&x)?.dims.clone();
    let y_shape = ctx.shape(ctx.output(0))?.dims.clone();
    let w_shape = ctx.shape(&w)?.dims.clone();
    let geo = conv_geometry(ctx, w_shape[2..].to_vec(), &x_shape[2..], &y_shape[2..])?;
    let group = ctx.int_attr("group", 1);
    Ok(only_first(transpose_back(
        ctx, &g, &w, &geo, &x_shape, &y_shape, group,
    )))
}

/// The adjoint of a convolution of geometry `geo` from `x_shape` to `y_shape`:
/// ConvTranspose of `g` with weights `w`, sized back to `x_shape`.
pub(super) fn transpose_back(
    ctx: &mut Ctx,
    g: &str,
    w: &str,
    geo: &Geometry,
    x_shape: &[usize],
    y_shape: &[usize],
    group: i64,
) -> String {
    let input = &x_shape[2..];
    let output = &y_shape[2..];
    // Size ConvTranspose produces without padding or output_padding.
    let full: Vec<usize> = (0..input.len())
        .map(|a| (output[a] - 1) * geo.strides[a] + (geo.kernel[a] - 1) * geo.dilations[a] + 1)
        .collect();
    let output_padding: Vec<i64> = (0..input.len())
        .map(|a| {
            input[a] as i64 - (full[a] as i64 - geo.pads_begin[a] as i64 - geo.pads_end[a] as i64)
        })
        .collect();
    let symmetric = geo.pads_begin == geo.pads_end;
    let direct = symmetric
        && output_padding
            .iter()
            .zip(&geo.strides)
            .all(|(&p, &s)| p >= 0 && (p as usize) < s.max(1));
    let common = vec![
        attr_ints("strides", &to_i64(&geo.strides)),
        attr_ints("dilations", &to_i64(&geo.dilations)),
        attr_int("group", group),
        attr_ints("kernel_shape", &to_i64(&geo.kernel)),
    ];
    if direct {
        let mut attrs = common;
        let pads: Vec<i64> = to_i64(&geo.pads_begin)
            .into_iter()
            .chain(to_i64(&geo.pads_end))
            .collect();
        attrs.push(attr_ints("pads", &pads));
        attrs.push(attr_ints("output_padding", &output_padding));
        return ctx.emit.op("ConvTranspose", &[g, w], attrs);
    }
    // Asymmetric padding (which ORT's CUDA ConvTranspose does not take), or
    // windows past the padded edge (ceil_mode pools): transpose unpadded,
    // crop the leading pad, zero-fill whatever falls short.
    let unpadded = ctx.emit.op("ConvTranspose", &[g, w], common);
    let axes: Vec<i64> = (2..2 + input.len() as i64).collect();
    let starts = to_i64(&geo.pads_begin);
    let ends: Vec<i64> = (0..input.len())
        .map(|a| (geo.pads_begin[a] + input[a]).min(full[a]) as i64)
        .collect();
    let (starts, ends, axes_name) = (
        ctx.emit.ints(&starts),
        ctx.emit.ints(&ends),
        ctx.emit.ints(&axes),
    );
    let cropped = ctx
        .emit
        .op("Slice", &[&unpadded, &starts, &ends, &axes_name], vec![]);
    let short: Vec<i64> = (0..input.len())
        .map(|a| (geo.pads_begin[a] + input[a]).saturating_sub(full[a]) as i64)
        .collect();
    if short.iter().all(|&s| s == 0) {
        return cropped;
    }
    let rank = x_shape.len();
    let mut pads = vec![0i64; 2 * rank];
    for (a, s) in short.iter().enumerate() {
        pads[rank + 2 + a] = *s;
    }
    let pads = ctx.emit.ints(&pads);
    ctx.emit.op(
        "Pad",
        &[&cropped, &pads],
        vec![attr_string("mode", "constant")],
    )
}

/// ConvTranspose: dx = Conv(g, W) with the same strides, pads, dilations and group.
pub fn conv_transpose(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    if ctx.string_attr("auto_pad", "NOTSET") != "NOTSET"
        || ctx.ints_attr("output_shape").is_some_and(|v| !v.is_empty())
    {
        return fail("ConvTranspose with auto_pad or output_shape is not supported; export with explicit pads");
    }
    let w = ctx.input(1).to_string();
    let mut attrs = vec![attr_int("group", ctx.int_attr("group", 1))];
    for name in ["strides", "dilations", "pads", "kernel_shape"] {
        if let Some(v) = ctx.ints_attr(name).filter(|v| !v.is_empty()) {
            attrs.push(attr_ints(name, &v));
        }
    }
    Ok(only_first(ctx.emit.op("Conv", &[&g, &w], attrs)))
}

pub(super) fn to_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}
