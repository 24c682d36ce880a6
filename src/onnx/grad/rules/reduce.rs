//! ReduceSum and ReduceMean: broadcast the gradient back over the reduced axes.

use super::{only_first, Ctx};
use crate::error::Result;

type Grads = Result<Vec<Option<String>>>;

/// The reduced axes, normalised to 0..rank: from input 1 (ReduceSum ≥ 13,
/// ReduceMean ≥ 18) or the `axes` attribute; empty means all axes unless
/// `noop_with_empty_axes`.
fn reduced_axes(ctx: &Ctx, rank: usize) -> Result<Option<Vec<i64>>> {
    let axes = if !ctx.input(1).is_empty() {
        ctx.const_ints(1)?
    } else {
        ctx.ints_attr("axes").unwrap_or_default()
    };
    if axes.is_empty() {
        return Ok(if ctx.int_attr("noop_with_empty_axes", 0) != 0 {
            None
        } else {
            Some((0..rank as i64).collect())
        });
    }
    Ok(Some(
        axes.iter()
            .map(|&a| if a < 0 { a + rank as i64 } else { a })
            .collect(),
    ))
}

fn reduce_back(ctx: &mut Ctx, grads: &[Option<String>], average: bool) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let shape = ctx.shape(&x)?.dims.clone();
    let Some(mut axes) = reduced_axes(ctx, shape.len())? else {
        return Ok(only_first(g));
    };
    axes.sort_unstable();
    let kept = if ctx.int_attr("keepdims", 1) != 0 {
        g
    } else {
        ctx.emit.unsqueeze(&g, &axes)
    };
    let scaled = if average {
        let count: usize = axes.iter().map(|&a| shape[a as usize]).product();
        let inverse = ctx.emit.scalar_f32(1.0 / count as f32);
        ctx.emit.binary("Mul", &kept, &inverse)
    } else {
        kept
    };
    let target = ctx.emit.shape_of(&x);
    Ok(only_first(ctx.emit.binary("Expand", &scaled, &target)))
}

pub fn reduce_sum(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_back(ctx, grads, false)
}

pub fn reduce_mean(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_back(ctx, grads, true)
}
