//! Reductions: broadcast the gradient back over the reduced axes, times the
//! local derivative of each element.

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

/// `t` (shaped like the reduction's output) with the reduced axes restored
/// as size 1, so it broadcasts against the input; `None` for a no-op
/// reduction (`noop_with_empty_axes` and no axes).
fn with_reduced_axes(ctx: &mut Ctx, t: &str) -> Result<Option<String>> {
    let rank = ctx.shape(ctx.input(0))?.rank();
    let Some(mut axes) = reduced_axes(ctx, rank)? else {
        return Ok(None);
    };
    axes.sort_unstable();
    Ok(Some(if ctx.int_attr("keepdims", 1) != 0 {
        t.to_string()
    } else {
        ctx.emit.unsqueeze(t, &axes)
    }))
}

/// g (broadcast back) times `local(ctx, x, y)`, y broadcast back too.
fn reduce_with(
    ctx: &mut Ctx,
    grads: &[Option<String>],
    local: fn(&mut Ctx, &str, &str) -> String,
) -> Grads {
    let g = ctx.grad(grads)?;
    let y = ctx.output(0).to_string();
    let x = ctx.input(0).to_string();
    let (Some(g), Some(y)) = (with_reduced_axes(ctx, &g)?, with_reduced_axes(ctx, &y)?) else {
        // A no-op reduction is the element-wise map itself, y = f(x).
        let local = local(ctx, &x, &y);
        return Ok(only_first(ctx.emit.binary("Mul", &g, &local)));
    };
    let local = local(ctx, &x, &y);
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// ReduceL2, y = √Σx²: x/y (0 where y = 0, as PyTorch's norm).
pub fn reduce_l2(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_with(ctx, grads, |ctx, x, y| {
        let zero = ctx.emit.scalar_f32(0.0);
        let is_zero = ctx.emit.binary("Equal", y, &zero);
        let one = ctx.emit.scalar_f32(1.0);
        let safe = ctx.emit.op("Where", &[&is_zero, &one, y], vec![]);
        let ratio = ctx.emit.binary("Div", x, &safe);
        ctx.emit.op("Where", &[&is_zero, &zero, &ratio], vec![])
    })
}

/// ReduceL1, y = Σ|x|: sign(x).
pub fn reduce_l1(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_with(ctx, grads, |ctx, x, _| ctx.emit.unary("Sign", x))
}

/// ReduceSumSquare, y = Σx²: 2x.
pub fn reduce_sum_square(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_with(ctx, grads, |ctx, x, _| {
        let two = ctx.emit.scalar_f32(2.0);
        ctx.emit.binary("Mul", x, &two)
    })
}

/// ReduceLogSumExp, y = log Σeˣ: e^(x − y), the softmax.
pub fn reduce_log_sum_exp(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_with(ctx, grads, |ctx, x, y| {
        let shifted = ctx.emit.binary("Sub", x, y);
        ctx.emit.unary("Exp", &shifted)
    })
}

/// ReduceProd, y = Πx: y/x (defined where no factor is 0).
pub fn reduce_prod(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    reduce_with(ctx, grads, |ctx, x, y| ctx.emit.binary("Div", y, x))
}

/// ReduceMax and ReduceMin: g to the elements equal to the result, shared
/// evenly among ties (PyTorch's `amax`/`amin`).
pub fn reduce_extremum(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let y = ctx.output(0).to_string();
    let rank = ctx.shape(&x)?.rank();
    let Some(axes) = reduced_axes(ctx, rank)? else {
        return Ok(only_first(g));
    };
    let y = with_reduced_axes(ctx, &y)?.expect("axes are reduced");
    let g = with_reduced_axes(ctx, &g)?.expect("axes are reduced");
    let equal = ctx.emit.binary("Equal", &x, &y);
    let mask = ctx.emit.op(
        "Cast",
        &[&equal],
        vec![crate::onnx::grad::emit::attr_int("to", 1)],
    );
    let ties = ctx.emit.reduce_sum(&mask, &axes, true);
    let shared = ctx.emit.binary("Div", &g, &ties);
    Ok(only_first(ctx.emit.binary("Mul", &shared, &mask)))
}
