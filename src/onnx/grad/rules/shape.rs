//! Ops that move values without changing them: the gradient moves back.

use super::{fail, only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::{attr_int, attr_ints, attr_string};

type Grads = Result<Vec<Option<String>>>;

/// Flatten, Reshape, Squeeze, Unsqueeze: reshape g to x's shape.
pub fn reshape_back(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    Ok(only_first(ctx.emit.reshape_like(&g, &x)))
}

/// Identity, Dropout (inference), Cast between float types.
pub fn identity(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    Ok(only_first(ctx.grad(grads)?))
}

/// Transpose by the inverse permutation.
pub fn transpose(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let rank = ctx.shape(ctx.input(0))?.rank();
    let perm = ctx
        .ints_attr("perm")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut inverse = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    Ok(only_first(ctx.emit.op(
        "Transpose",
        &[&g],
        vec![attr_ints("perm", &inverse)],
    )))
}

fn normalized_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64) as usize
    } else {
        axis as usize
    }
}

/// Concat: split g back into the pieces.
pub fn concat(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let out = ctx.shape(ctx.output(0))?.clone();
    let axis = normalized_axis(ctx.int_attr("axis", 0), out.rank());
    if out.dynamic[axis] {
        return fail("Concat along the batch axis is not supported");
    }
    let mut sizes = Vec::new();
    for i in 0..ctx.node.input.len() {
        sizes.push(ctx.shape(ctx.input(i))?.dims[axis] as i64);
    }
    let split = ctx.emit.ints(&sizes);
    let pieces = ctx.emit.op_n(
        "Split",
        &[&g, &split],
        vec![attr_int("axis", axis as i64)],
        sizes.len(),
    );
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| ctx.wants(i).then_some(p))
        .collect())
}

/// Split: concatenate the outputs' gradients, zeros for unused outputs.
pub fn split(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let rank = ctx.shape(ctx.input(0))?.rank();
    let axis = normalized_axis(ctx.int_attr("axis", 0), rank);
    let mut parts = Vec::new();
    for (i, grad) in grads.iter().enumerate() {
        parts.push(match grad {
            Some(g) => g.clone(),
            None => {
                let output = ctx.output(i).to_string();
                ctx.emit.zeros_like(&output)
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(only_first(ctx.emit.op(
        "Concat",
        &refs,
        vec![attr_int("axis", axis as i64)],
    )))
}

/// Slice: with steps of 1 off the batch axis, pad g with zeros back to x's
/// extent; any other slice (steps, negative steps, the batch axis) through
/// the positions of x's elements.
pub fn slice(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    match slice_by_padding(ctx, grads)? {
        Some(g) => Ok(only_first(g)),
        None => super::index::through_positions(ctx, grads),
    }
}

/// `None` when the slice is not a step-1 slice of non-batch axes.
fn slice_by_padding(ctx: &mut Ctx, grads: &[Option<String>]) -> Result<Option<String>> {
    let g = ctx.grad(grads)?;
    let x = ctx.shape(ctx.input(0))?.clone();
    let rank = x.rank();
    // Bounds computed at run time go through the positions instead.
    let (Ok(starts), Ok(ends)) = (ctx.const_ints(1), ctx.const_ints(2)) else {
        return Ok(None);
    };
    let axes = if ctx.input(3).is_empty() {
        (0..starts.len() as i64).collect()
    } else {
        let Ok(axes) = ctx.const_ints(3) else {
            return Ok(None);
        };
        axes
    };
    let steps = if ctx.input(4).is_empty() {
        vec![1; starts.len()]
    } else {
        let Ok(steps) = ctx.const_ints(4) else {
            return Ok(None);
        };
        steps
    };
    let mut pads = vec![0i64; 2 * rank];
    for (k, &axis) in axes.iter().enumerate() {
        if steps[k] != 1 {
            return Ok(None);
        }
        let a = normalized_axis(axis, rank);
        let dim = x.dims[a] as i64;
        let clamp = |v: i64| (if v < 0 { v + dim } else { v }).clamp(0, dim);
        let (start, end) = (clamp(starts[k]), clamp(ends[k]).max(clamp(starts[k])));
        if x.dynamic[a] && (start != 0 || end != dim) {
            return Ok(None);
        }
        pads[a] = start;
        pads[rank + a] = dim - end;
    }
    let pads = ctx.emit.ints(&pads);
    Ok(Some(ctx.emit.op(
        "Pad",
        &[&g, &pads],
        vec![attr_string("mode", "constant")],
    )))
}

/// Pad: in constant mode (non-negative pads), slice the padding off g; in
/// reflect, edge and wrap modes, where padding copies elements of x, the
/// Pad replayed on x's positions says where each element of g goes.
pub fn pad(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let mode = ctx.string_attr("mode", "constant");
    if mode != "constant" {
        if !matches!(mode.as_str(), "reflect" | "edge" | "wrap") {
            return fail(format!("Pad mode `{mode}`"));
        }
        if ctx.const_ints(1)?.iter().any(|&p| p < 0) {
            return fail("Pad with negative pads is not supported");
        }
        // The constant value (input 2) is unused in these modes, and a float
        // one would not type-check against int64 positions.
        let mut others = ctx.node.input[1..].to_vec();
        if let Some(value) = others.get_mut(1) {
            value.clear();
        }
        return super::index::replay_on_positions(ctx, grads, &others);
    }
    let g = ctx.grad(grads)?;
    let x = ctx.shape(ctx.input(0))?.clone();
    let rank = x.rank();
    let pads = ctx.const_ints(1)?;
    let axes: Vec<usize> = if ctx.input(3).is_empty() {
        (0..rank).collect()
    } else {
        ctx.const_ints(3)?
            .iter()
            .map(|&a| normalized_axis(a, rank))
            .collect()
    };
    if pads.iter().any(|&p| p < 0) {
        return fail("Pad with negative pads is not supported");
    }
    let n = axes.len();
    let (mut starts, mut ends, mut slice_axes) = (Vec::new(), Vec::new(), Vec::new());
    for (k, &a) in axes.iter().enumerate() {
        if pads[k] == 0 && pads[n + k] == 0 {
            continue;
        }
        starts.push(pads[k]);
        ends.push(pads[k] + x.dims[a] as i64);
        slice_axes.push(a as i64);
    }
    if starts.is_empty() {
        return Ok(only_first(g));
    }
    let (starts, ends, slice_axes) = (
        ctx.emit.ints(&starts),
        ctx.emit.ints(&ends),
        ctx.emit.ints(&slice_axes),
    );
    Ok(only_first(ctx.emit.op(
        "Slice",
        &[&g, &starts, &ends, &slice_axes],
        vec![],
    )))
}

/// Gather with a constant scalar index or a contiguous run of indices
/// (ViT's class token, channel selection): pad g back into place. Any other
/// indices, computed ones included, through the positions of x's elements.
pub fn gather(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    match gather_by_padding(ctx, grads)? {
        Some(g) => Ok(only_first(g)),
        None => super::index::through_positions(ctx, grads),
    }
}

/// `None` unless the indices are a constant scalar or contiguous range.
fn gather_by_padding(ctx: &mut Ctx, grads: &[Option<String>]) -> Result<Option<String>> {
    let g = ctx.grad(grads)?;
    let x = ctx.shape(ctx.input(0))?.clone();
    let rank = x.rank();
    let axis = normalized_axis(ctx.int_attr("axis", 0), rank);
    let dim = x.dims[axis] as i64;
    let Ok(indices) = ctx.const_ints(1) else {
        return Ok(None);
    };
    let index_rank = ctx
        .shape(ctx.input(1))
        .map(|s| s.rank())
        .unwrap_or(usize::from(indices.len() != 1));
    let indices: Vec<i64> = indices
        .iter()
        .map(|&i| if i < 0 { i + dim } else { i })
        .collect();
    let contiguous = indices.windows(2).all(|w| w[1] == w[0] + 1);
    if indices.is_empty() || !contiguous || index_rank > 1 || x.dynamic[axis] {
        return Ok(None);
    }
    let g = if index_rank == 0 {
        ctx.emit.unsqueeze(&g, &[axis as i64])
    } else {
        g
    };
    let mut pads = vec![0i64; 2 * rank];
    pads[axis] = indices[0];
    pads[rank + axis] = dim - indices[indices.len() - 1] - 1;
    let pads = ctx.emit.ints(&pads);
    Ok(Some(ctx.emit.op(
        "Pad",
        &[&g, &pads],
        vec![attr_string("mode", "constant")],
    )))
}

/// Expand: sum g back over the broadcast axes.
pub fn expand(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    Ok(only_first(ctx.unbroadcast(&g, 0)?))
}

/// Resize, nearest, integer up-scaling of the two spatial axes of an NCHW
/// tensor, with a coordinate mapping that makes each input pixel an s×s block:
/// sum g over each block.
pub fn resize(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let mode = ctx.string_attr("mode", "nearest");
    let transform = ctx.string_attr("coordinate_transformation_mode", "half_pixel");
    let rounding = ctx.string_attr("nearest_mode", "round_prefer_floor");
    let block_mapping = match transform.as_str() {
        "asymmetric" => rounding == "floor",
        "half_pixel" | "pytorch_half_pixel" => rounding.starts_with("round_prefer"),
        _ => false,
    };
    let x = ctx.shape(ctx.input(0))?.dims.clone();
    let y = ctx.shape(ctx.output(0))?.dims.clone();
    let integer_scale = x.len() == 4 && x[..2] == y[..2] && y[2] % x[2] == 0 && y[3] % x[3] == 0;
    if mode != "nearest" || !block_mapping || !integer_scale {
        return fail(format!(
            "Resize is differentiated only for nearest, integer up-scaling of NCHW with block mapping (got mode {mode}, {transform}/{rounding}, {x:?} -> {y:?})"
        ));
    }
    let (sh, sw) = ((y[2] / x[2]) as i64, (y[3] / x[3]) as i64);
    let blocks = ctx.emit.ints(&[0, 0, x[2] as i64, sh, x[3] as i64, sw]);
    let blocked = ctx.emit.binary("Reshape", &g, &blocks);
    Ok(only_first(ctx.emit.reduce_sum(&blocked, &[3, 5], false)))
}
