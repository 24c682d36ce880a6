//! Gemm and MatMul: transposed products.

use super::{fail, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::{attr_float, attr_int, attr_ints};

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
