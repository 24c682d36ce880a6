//! Gemm, MatMul and Einsum: transposed products.

use super::{fail, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::{attr_float, attr_int, attr_ints, attr_string};

type Grads = Result<Vec<Option<String>>>;

/// Y = alpha·A'·B' + beta·C, A' = A or Aᵀ (transA), B' likewise.
pub fn gemm(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let (a, b) = (ctx.input(0).to_string(), ctx.input(1).to_string());
    let (trans_a, trans_b) = (ctx.int_attr("transA", 0), ctx.int_attr("transB", 0));
    let (alpha, beta) = (ctx.float_attr("alpha", 1.0), ctx.float_attr("beta", 1.0));
    let gemm = |ctx: &mut Ctx, x: &str, y: &str, ta: i64, tb: i64| {
        ctx.emit.op(
            "Gemm",
            &[x, y],
            vec![
                attr_int("transA", ta),
                attr_int("transB", tb),
                attr_float("alpha", alpha),
            ],
        )
    };
    let grad_a = ctx.wants(0).then(|| {
        if trans_a == 0 {
            gemm(ctx, &g, &b, 0, 1 - trans_b)
        } else {
            gemm(ctx, &b, &g, trans_b, 1)
        }
    });
    let grad_b = ctx.wants(1).then(|| {
        if trans_b == 0 {
            gemm(ctx, &a, &g, 1 - trans_a, 0)
        } else {
            gemm(ctx, &g, &a, 1, trans_a)
        }
    });
    let grad_c = if ctx.wants(2) {
        let scale = ctx.emit.scalar_f32(beta);
        let scaled = ctx.emit.binary("Mul", &g, &scale);
        Some(ctx.unbroadcast(&scaled, 2)?)
    } else {
        None
    };
    Ok(vec![grad_a, grad_b, grad_c])
}

/// Swaps the last two axes of a tensor of rank `rank`.
fn transpose_last(ctx: &mut Ctx, x: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 2, rank - 1);
    ctx.emit
        .op("Transpose", &[x], vec![attr_ints("perm", &perm)])
}

/// Batched, broadcasting MatMul: dA = g·Bᵀ, dB = Aᵀ·g, each summed back to its operand's shape.
pub fn matmul(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let (a, b) = (ctx.input(0).to_string(), ctx.input(1).to_string());
    let (rank_a, rank_b) = (ctx.shape(&a)?.rank(), ctx.shape(&b)?.rank());
    if rank_a < 2 || rank_b < 2 {
        return fail("MatMul with a 1-D operand is not supported");
    }
    let grad_a = if ctx.wants(0) {
        let bt = transpose_last(ctx, &b, rank_b);
        let product = ctx.emit.binary("MatMul", &g, &bt);
        Some(unbroadcast_matmul(ctx, &product, 0)?)
    } else {
        None
    };
    let grad_b = if ctx.wants(1) {
        let at = transpose_last(ctx, &a, rank_a);
        let product = ctx.emit.binary("MatMul", &at, &g);
        Some(unbroadcast_matmul(ctx, &product, 1)?)
    } else {
        None
    };
    Ok(vec![grad_a, grad_b])
}

/// Sums a batched product over the batch axes operand `i` was broadcast along.
fn unbroadcast_matmul(ctx: &mut Ctx, product: &str, i: usize) -> Result<String> {
    let operand = ctx.input(i).to_string();
    let shape = ctx.shape(&operand)?.clone();
    let out = ctx.shape(ctx.output(0))?.clone();
    let lead = out.rank() - shape.rank();
    let batch_axes: Vec<i64> = (0..out.rank() - 2)
        .filter(|&ax| ax < lead || (shape.dims[ax - lead] == 1 && out.dims[ax] != 1))
        .map(|ax| ax as i64)
        .collect();
    let summed = if batch_axes.is_empty() {
        product.to_string()
    } else {
        ctx.emit.reduce_sum(product, &batch_axes, true)
    };
    Ok(ctx.emit.reshape_like(&summed, &operand))
}

/// Einsum: operand i's gradient is the einsum of g with the other operands,
/// written to operand i's subscripts; letters only operand i sums over are
/// broadcast back. No ellipsis, no letter repeated within an operand.
pub fn einsum(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let equation: String = ctx
        .string_attr("equation", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if equation.contains("...") {
        return fail("Einsum with an ellipsis is not supported");
    }
    let (lhs, rhs) = match equation.split_once("->") {
        Some((l, r)) => (l.to_string(), r.to_string()),
        None => {
            // Implicit output: the letters used once, in alphabetical order.
            let mut once: Vec<char> = equation
                .chars()
                .filter(|c| c.is_ascii_alphabetic())
                .filter(|&c| equation.matches(c).count() == 1)
                .collect();
            once.sort_unstable();
            (equation.clone(), once.into_iter().collect())
        }
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ctx.node.input.len() {
        return fail(format!("Einsum `{equation}` does not match its inputs"));
    }
    let mut out = Vec::new();
    for (i, term) in terms.iter().enumerate() {
        if !ctx.wants(i) {
            out.push(None);
            continue;
        }
        if term.chars().any(|c| term.matches(c).count() > 1) {
            return fail(format!(
                "Einsum `{equation}` takes a diagonal (a repeated letter)"
            ));
        }
        let others: String = terms
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, t)| *t)
            .collect();
        // Letters operand i alone sums over, absent from g and the others,
        // come back through a tensor of ones with those letters (static
        // sizes), else by Expand.
        let reachable = |c: char| rhs.contains(c) || others.contains(c);
        let shape = ctx.shape(ctx.input(i))?.clone();
        let missing: Vec<(usize, char)> = term
            .chars()
            .enumerate()
            .filter(|&(_, c)| !reachable(c))
            .collect();
        let ones_operand = !missing.is_empty() && missing.iter().all(|&(p, _)| !shape.dynamic[p]);
        let target: String = if ones_operand {
            term.to_string()
        } else {
            term.chars().filter(|&c| reachable(c)).collect()
        };
        let mut spec = rhs.clone();
        let mut inputs = vec![g.clone()];
        for (k, t) in terms.iter().enumerate().filter(|(k, _)| *k != i) {
            spec.push(',');
            spec.push_str(t);
            inputs.push(ctx.input(k).to_string());
        }
        if ones_operand {
            let dims: Vec<i64> = missing.iter().map(|&(p, _)| shape.dims[p] as i64).collect();
            let count = dims.iter().product::<i64>() as usize;
            inputs.push(ctx.emit.const_f32(&dims, &vec![1.0; count]));
            spec.push(',');
            spec.extend(missing.iter().map(|&(_, c)| c));
        }
        let spec = format!("{spec}->{target}");
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let gi = ctx
            .emit
            .op("Einsum", &refs, vec![attr_string("equation", &spec)]);
        out.push(Some(if missing.is_empty() || ones_operand {
            gi
        } else {
            let axes: Vec<i64> = missing.iter().map(|&(p, _)| p as i64).collect();
            let unsqueezed = ctx.emit.unsqueeze(&gi, &axes);
            let full = ctx.emit.shape_of(ctx.input(i));
            ctx.emit.binary("Expand", &unsqueezed, &full)
        }));
    }
    Ok(out)
}
