//! QuantizeLinear by the clipped straight-through estimator: the rounding
//! is taken as the identity (BPDA), the saturation is not. With a
//! per-tensor scale s and zero point z, q = clamp(round(x/s) + z, qmin,
//! qmax), so g passes where (qmin − z)·s ≤ x ≤ (qmax − z)·s and stops
//! where the quantized value saturates (as ReLU does when the exporter
//! folded it into a uint8 range). DequantizeLinear, linear in q, passes g
//! as is: the pair is the identity inside the range.

use super::{only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::attr_int;

type Grads = Result<Vec<Option<String>>>;

pub fn quantize_linear(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let scale = ctx.input(1).to_string();
    let zero_point = ctx.input(2).to_string();
    let per_tensor = ctx
        .shape(&scale)
        .is_ok_and(|s| s.dims.iter().product::<usize>() == 1);
    // The zero point's type is the quantized type (uint8 without one).
    let range = match zero_point.is_empty() {
        true => Some((0.0, 255.0)),
        false => match ctx.constants.data_type(&zero_point) {
            Some(2) => Some((0.0, 255.0)),
            Some(3) => Some((-128.0, 127.0)),
            Some(4) => Some((0.0, 65535.0)),
            Some(5) => Some((-32768.0, 32767.0)),
            _ => None,
        },
    };
    let (Some((low, high)), true) = (range, per_tensor) else {
        // Per-axis scales or an unknown type: the plain estimator.
        return Ok(only_first(g));
    };
    let x = ctx.input(0).to_string();
    let zero = if zero_point.is_empty() {
        ctx.emit.scalar_f32(0.0)
    } else {
        ctx.emit.op("Cast", &[&zero_point], vec![attr_int("to", 1)])
    };
    let bound = |ctx: &mut Ctx, q: f32| {
        let q = ctx.emit.scalar_f32(q);
        let shifted = ctx.emit.binary("Sub", &q, &zero);
        ctx.emit.binary("Mul", &shifted, &scale)
    };
    let (low, high) = (bound(ctx, low), bound(ctx, high));
    let above = ctx.emit.binary("GreaterOrEqual", &x, &low);
    let below = ctx.emit.binary("LessOrEqual", &x, &high);
    let inside = ctx.emit.binary("And", &above, &below);
    Ok(only_first(ctx.emit.mask(&inside, &g)))
}
