//! Broadcasting arithmetic: each operand's gradient is summed back to its
//! own shape ([`Ctx::unbroadcast`]).

use super::{fail, only_first, Ctx};
use crate::error::Result;

type Grads = Result<Vec<Option<String>>>;

/// Applies `local(ctx, g, i)` to each wanted operand, then unbroadcasts.
fn per_operand(
    ctx: &mut Ctx,
    grads: &[Option<String>],
    local: fn(&mut Ctx, &str, usize) -> String,
) -> Grads {
    let g = ctx.grad(grads)?;
    let mut out = Vec::new();
    for i in 0..ctx.node.input.len() {
        out.push(if ctx.wants(i) {
            let gi = local(ctx, &g, i);
            Some(ctx.unbroadcast(&gi, i)?)
        } else {
            None
        });
    }
    Ok(out)
}

pub fn add(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    per_operand(ctx, grads, |_, g, _| g.to_string())
}

pub fn sub(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    per_operand(ctx, grads, |ctx, g, i| {
        if i == 0 {
            g.to_string()
        } else {
            ctx.emit.unary("Neg", g)
        }
    })
}

pub fn mul(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    per_operand(ctx, grads, |ctx, g, i| {
        let other = ctx.input(1 - i).to_string();
        ctx.emit.binary("Mul", g, &other)
    })
}

/// Div: d(a/b)/da = 1/b, d(a/b)/db = −y/b.
pub fn div(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    per_operand(ctx, grads, |ctx, g, i| {
        let b = ctx.input(1).to_string();
        let scaled = ctx.emit.binary("Div", g, &b);
        if i == 0 {
            scaled
        } else {
            let y = ctx.output(0).to_string();
            let product = ctx.emit.binary("Mul", &scaled, &y);
            ctx.emit.unary("Neg", &product)
        }
    })
}

pub fn neg(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    Ok(only_first(ctx.emit.unary("Neg", &g)))
}

/// Pow with an exponent independent of the input: g·p·x^(p−1).
pub fn pow(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    if ctx.wants(1) {
        return fail("the exponent depends on the input; only Pow(x, constant) is supported");
    }
    let (x, p) = (ctx.input(0).to_string(), ctx.input(1).to_string());
    let p_float = ctx.emit.op(
        "Cast",
        &[&p],
        vec![crate::onnx::grad::emit::attr_int("to", 1)],
    );
    let one = ctx.emit.scalar_f32(1.0);
    let p_minus_one = ctx.emit.binary("Sub", &p_float, &one);
    let power = ctx.emit.binary("Pow", &x, &p_minus_one);
    let local = ctx.emit.binary("Mul", &power, &p_float);
    let gx = ctx.emit.binary("Mul", &g, &local);
    Ok(vec![Some(ctx.unbroadcast(&gx, 0)?), None])
}

/// Sqrt: g/(2y).
pub fn sqrt(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let two = ctx.emit.scalar_f32(2.0);
    let twice = ctx.emit.binary("Mul", ctx.output(0), &two);
    Ok(only_first(ctx.emit.binary("Div", &g, &twice)))
}

/// Where: the gradient goes to the branch each element was taken from.
pub fn where_(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let condition = ctx.input(0).to_string();
    let zero = ctx.emit.scalar_f32(0.0);
    let mut out = vec![None];
    for i in [1, 2] {
        out.push(if ctx.wants(i) {
            let branch = if i == 1 {
                [&condition, &g, &zero]
            } else {
                [&condition, &zero, &g]
            };
            let gi = ctx
                .emit
                .op("Where", &[branch[0], branch[1], branch[2]], vec![]);
            Some(ctx.unbroadcast(&gi, i)?)
        } else {
            None
        });
    }
    Ok(out)
}

/// Sum (variadic): g to every operand.
pub fn sum(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    per_operand(ctx, grads, |_, g, _| g.to_string())
}

/// Mean (variadic): g/n to every operand.
pub fn mean(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    per_operand(ctx, grads, |ctx, g, _| {
        let n = ctx.emit.scalar_f32(1.0 / ctx.node.input.len() as f32);
        ctx.emit.binary("Mul", g, &n)
    })
}

/// Max and Min (variadic): g to the operands equal to the result, shared
/// evenly among ties (PyTorch's `maximum`/`minimum` halve it between two).
pub fn extremum(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let y = ctx.output(0).to_string();
    let masks: Vec<String> = (0..ctx.node.input.len())
        .map(|i| {
            let equal = ctx.emit.binary("Equal", ctx.input(i), &y);
            ctx.emit.op(
                "Cast",
                &[&equal],
                vec![crate::onnx::grad::emit::attr_int("to", 1)],
            )
        })
        .collect();
    let ties = ctx.emit.sum(&masks);
    let shared = ctx.emit.binary("Div", &g, &ties);
    let mut out = Vec::new();
    for (i, mask) in masks.iter().enumerate() {
        out.push(if ctx.wants(i) {
            let gi = ctx.emit.binary("Mul", &shared, mask);
            Some(ctx.unbroadcast(&gi, i)?)
        } else {
            None
        });
    }
    Ok(out)
}
