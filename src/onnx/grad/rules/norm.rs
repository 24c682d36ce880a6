//! Normalisations and softmaxes.

use super::{fail, only_first, Ctx};
use crate::error::Result;

type Grads = Result<Vec<Option<String>>>;

/// BatchNormalization in inference mode: dx = g · scale/√(var + ε), per channel.
pub fn batch_normalization(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    if ctx.int_attr("training_mode", 0) != 0 {
        return fail("BatchNormalization in training mode; export the model in eval mode");
    }
    let rank = ctx.shape(ctx.input(0))?.rank();
    let (scale, var) = (ctx.input(1).to_string(), ctx.input(4).to_string());
    let eps = ctx.emit.scalar_f32(ctx.float_attr("epsilon", 1e-5));
    let shifted = ctx.emit.binary("Add", &var, &eps);
    let std = ctx.emit.unary("Sqrt", &shifted);
    let coefficient = ctx.emit.binary("Div", &scale, &std);
    // [C] -> [C, 1, ..., 1] so it broadcasts over [N, C, ...].
    let trailing: Vec<i64> = (1..rank as i64 - 1).collect();
    let coefficient = if trailing.is_empty() {
        coefficient
    } else {
        ctx.emit.unsqueeze(&coefficient, &trailing)
    };
    Ok(only_first(ctx.emit.binary("Mul", &g, &coefficient)))
}

/// Mean over `axes` (keepdims) as ReduceSum × 1/count, valid at every opset.
fn mean(ctx: &mut Ctx, x: &str, axes: &[i64], count: usize) -> String {
    let sum = ctx.emit.reduce_sum(x, axes, true);
    let inverse = ctx.emit.scalar_f32(1.0 / count as f32);
    ctx.emit.binary("Mul", &sum, &inverse)
}

/// LayerNormalization over axes `axis..rank`:
/// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)), ĝ = g · scale.
pub fn layer_normalization(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let rank = ctx.shape(ctx.input(0))?.rank() as i64;
    let axis = ctx.int_attr("axis", -1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let scale = ctx.input(1).to_string();
    normalized_back(ctx, &g, &scale, &(axis..rank).collect::<Vec<_>>())
}

/// InstanceNormalization: normalised over the spatial axes of each sample
/// and channel, `scale` per channel; the same backward as LayerNormalization.
pub fn instance_normalization(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let rank = ctx.shape(ctx.input(0))?.rank() as i64;
    if rank < 3 {
        return fail("InstanceNormalization of a tensor without spatial axes");
    }
    // [C] -> [C, 1, ..., 1] so it broadcasts over [N, C, ...].
    let trailing: Vec<i64> = (1..rank - 1).collect();
    let scale = ctx.emit.unsqueeze(ctx.input(1), &trailing);
    normalized_back(ctx, &g, &scale, &(2..rank).collect::<Vec<_>>())
}

/// dx of y = scale · (x − mean)/√(var + ε) + bias, statistics over `axes`.
fn normalized_back(ctx: &mut Ctx, g: &str, scale: &str, axes: &[i64]) -> Grads {
    let x = ctx.input(0).to_string();
    let shape = ctx.shape(&x)?.dims.clone();
    if axes
        .iter()
        .any(|&a| ctx.shape(&x).is_ok_and(|s| s.dynamic[a as usize]))
    {
        return fail("normalisation over the batch axis is not supported");
    }
    let count: usize = axes.iter().map(|&a| shape[a as usize]).product();
    let axes = axes.to_vec();
    let mu = mean(ctx, &x, &axes, count);
    let centred = ctx.emit.binary("Sub", &x, &mu);
    let squared = ctx.emit.binary("Mul", &centred, &centred);
    let variance = mean(ctx, &squared, &axes, count);
    let eps = ctx.emit.scalar_f32(ctx.float_attr("epsilon", 1e-5));
    let shifted = ctx.emit.binary("Add", &variance, &eps);
    let std = ctx.emit.unary("Sqrt", &shifted);
    let one = ctx.emit.scalar_f32(1.0);
    let rstd = ctx.emit.binary("Div", &one, &std);
    let normalized = ctx.emit.binary("Mul", &centred, &rstd);
    let scaled_g = ctx.emit.binary("Mul", g, scale);
    let mean_g = mean(ctx, &scaled_g, &axes, count);
    let product = ctx.emit.binary("Mul", &scaled_g, &normalized);
    let mean_product = mean(ctx, &product, &axes, count);
    let correction = ctx.emit.binary("Mul", &normalized, &mean_product);
    let centred_g = ctx.emit.binary("Sub", &scaled_g, &mean_g);
    let inner = ctx.emit.binary("Sub", &centred_g, &correction);
    Ok(only_first(ctx.emit.binary("Mul", &inner, &rstd)))
}

fn softmax_axis(ctx: &Ctx) -> Result<i64> {
    let rank = ctx.shape(ctx.input(0))?.rank() as i64;
    let axis = ctx.int_attr("axis", -1);
    Ok(if axis < 0 { axis + rank } else { axis })
}

/// Softmax (opset ≥ 13, one axis): dx = y · (g − Σ g·y).
pub fn softmax(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let axis = softmax_axis(ctx)?;
    let y = ctx.output(0).to_string();
    let product = ctx.emit.binary("Mul", &g, &y);
    let total = ctx.emit.reduce_sum(&product, &[axis], true);
    let centred = ctx.emit.binary("Sub", &g, &total);
    Ok(only_first(ctx.emit.binary("Mul", &y, &centred)))
}

/// LogSoftmax: dx = g − softmax(x) · Σ g, with softmax(x) = exp(y).
pub fn log_softmax(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let axis = softmax_axis(ctx)?;
    let probabilities = ctx.emit.unary("Exp", ctx.output(0));
    let total = ctx.emit.reduce_sum(&g, &[axis], true);
    let spread = ctx.emit.binary("Mul", &probabilities, &total);
    Ok(only_first(ctx.emit.binary("Sub", &g, &spread)))
}
