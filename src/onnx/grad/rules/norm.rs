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

/// GroupNormalization (opset 18 and 21): the channels split into
/// `num_groups`, each normalised over its channels and the spatial axes;
/// `scale` per group (18) or per channel (21).
pub fn group_normalization(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let shape = ctx.shape(&x)?.clone();
    let groups = ctx.int_attr("num_groups", 0);
    let channels = shape.dims.get(1).copied().unwrap_or(0) as i64;
    if shape.rank() < 3
        || groups < 1
        || channels % groups != 0
        || shape.dynamic[1..].contains(&true)
    {
        return fail(format!(
            "GroupNormalization of {channels} channels in {groups} groups"
        ));
    }
    let scale_len = ctx.shape(ctx.input(1))?.dims.iter().product::<usize>() as i64;
    let trailing: Vec<i64> = (1..shape.rank() as i64 - 1).collect();
    let scale = if scale_len == channels {
        ctx.emit.unsqueeze(ctx.input(1), &trailing)
    } else {
        // One scale per group: repeat it for the group's channels.
        let per_group = ctx.emit.unsqueeze(ctx.input(1), &[1]);
        let repeats = ctx.emit.ints(&[1, channels / groups]);
        let tiled = ctx.emit.binary("Tile", &per_group, &repeats);
        let flat = ctx.emit.ints(&[channels]);
        let flat = ctx.emit.binary("Reshape", &tiled, &flat);
        ctx.emit.unsqueeze(&flat, &trailing)
    };
    let scaled_g = ctx.emit.binary("Mul", &g, &scale);
    let grouped_shape = ctx.emit.ints(&[0, groups, -1]);
    let grouped_x = ctx.emit.binary("Reshape", &x, &grouped_shape);
    let grouped_g = ctx.emit.binary("Reshape", &scaled_g, &grouped_shape);
    let count = shape.dims[1..].iter().product::<usize>() / groups as usize;
    let dx = normalized_back_of(ctx, &grouped_x, count, &grouped_g, &[2])?;
    Ok(only_first(ctx.emit.reshape_like(&dx, &x)))
}

/// LpNormalization, y = x/‖x‖ₚ along `axis` (p = 1 or 2):
/// dx = (g − s·Σ g·y)/‖x‖ₚ with s = y (p = 2) or sign(x) (p = 1).
pub fn lp_normalization(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let y = ctx.output(0).to_string();
    let rank = ctx.shape(&x)?.rank() as i64;
    let axis = ctx.int_attr("axis", -1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let (norm, direction) = match ctx.int_attr("p", 2) {
        2 => {
            let square = ctx.emit.binary("Mul", &x, &x);
            let total = ctx.emit.reduce_sum(&square, &[axis], true);
            (ctx.emit.unary("Sqrt", &total), y.clone())
        }
        1 => {
            let magnitude = ctx.emit.unary("Abs", &x);
            let total = ctx.emit.reduce_sum(&magnitude, &[axis], true);
            (total, ctx.emit.unary("Sign", &x))
        }
        p => return fail(format!("LpNormalization with p = {p}")),
    };
    let product = ctx.emit.binary("Mul", &g, &y);
    let projection = ctx.emit.reduce_sum(&product, &[axis], true);
    let along = ctx.emit.binary("Mul", &direction, &projection);
    let numerator = ctx.emit.binary("Sub", &g, &along);
    Ok(only_first(ctx.emit.binary("Div", &numerator, &norm)))
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
    let scaled_g = ctx.emit.binary("Mul", g, scale);
    let dx = normalized_back_of(ctx, &x, count, &scaled_g, axes)?;
    Ok(only_first(dx))
}

/// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) for x normalised over
/// `axes` (`count` elements), ĝ the gradient already times the scale.
fn normalized_back_of(
    ctx: &mut Ctx,
    x: &str,
    count: usize,
    scaled_g: &str,
    axes: &[i64],
) -> Result<String> {
    let x = x.to_string();
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
    let mean_g = mean(ctx, scaled_g, &axes, count);
    let product = ctx.emit.binary("Mul", scaled_g, &normalized);
    let mean_product = mean(ctx, &product, &axes, count);
    let correction = ctx.emit.binary("Mul", &normalized, &mean_product);
    let centred_g = ctx.emit.binary("Sub", scaled_g, &mean_g);
    let inner = ctx.emit.binary("Sub", &centred_g, &correction);
    Ok(ctx.emit.binary("Mul", &inner, &rstd))
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
