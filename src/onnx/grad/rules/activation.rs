//! Element-wise activations: the gradient is `g` times the local derivative.

use super::{only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::specialise::ReluSite;

type Grads = Result<Vec<Option<String>>>;

/// Relu: `g` where x > 0 (PyTorch's choice at 0).
pub fn relu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let zero = ctx.emit.scalar_f32(0.0);
    let positive = ctx.emit.binary("Greater", ctx.input(0), &zero);
    let dx = ctx.emit.mask(&positive, &g);
    ctx.emit.relu_sites.push(ReluSite {
        output: dx.clone(),
        input: ctx.input(0).to_string(),
        grad: g,
    });
    Ok(only_first(dx))
}

/// LeakyRelu: `g` where x > 0, `alpha·g` elsewhere.
pub fn leaky_relu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let alpha = ctx.emit.scalar_f32(ctx.float_attr("alpha", 0.01));
    slope_where_negative(ctx, &g, &alpha)
}

/// PRelu: like LeakyRelu with a (broadcast) learned slope; only x is differentiated.
pub fn prelu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let slope = ctx.input(1).to_string();
    slope_where_negative(ctx, &g, &slope)
}

fn slope_where_negative(ctx: &mut Ctx, g: &str, slope: &str) -> Grads {
    let scaled = ctx.emit.binary("Mul", g, slope);
    where_positive(ctx, g, &scaled)
}

/// `positive` where x > 0, `otherwise` elsewhere: the gradient of the
/// piecewise activations (ReLU family, ELU family).
fn where_positive(ctx: &mut Ctx, positive: &str, otherwise: &str) -> Grads {
    let zero = ctx.emit.scalar_f32(0.0);
    let above = ctx.emit.binary("Greater", ctx.input(0), &zero);
    Ok(only_first(ctx.emit.op(
        "Where",
        &[&above, positive, otherwise],
        vec![],
    )))
}

/// Sigmoid: g·y·(1−y).
pub fn sigmoid(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let y = ctx.output(0).to_string();
    let one = ctx.emit.scalar_f32(1.0);
    let complement = ctx.emit.binary("Sub", &one, &y);
    let local = ctx.emit.binary("Mul", &y, &complement);
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// Tanh: g·(1−y²).
pub fn tanh(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let y = ctx.output(0).to_string();
    let one = ctx.emit.scalar_f32(1.0);
    let square = ctx.emit.binary("Mul", &y, &y);
    let local = ctx.emit.binary("Sub", &one, &square);
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// Softplus: g·sigmoid(x).
pub fn softplus(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let local = ctx.emit.unary("Sigmoid", ctx.input(0));
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// Exp: g·y.
pub fn exp(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    Ok(only_first(ctx.emit.binary("Mul", &g, ctx.output(0))))
}

/// Elu: g where x > 0, g·(y + alpha) elsewhere.
pub fn elu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let alpha = ctx.emit.scalar_f32(ctx.float_attr("alpha", 1.0));
    let local = ctx.emit.binary("Add", ctx.output(0), &alpha);
    let scaled = ctx.emit.binary("Mul", &g, &local);
    where_positive(ctx, &g, &scaled)
}

/// Erf: g·2/√π·exp(−x²).
pub fn erf(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let local = gaussian(ctx, &x, -1.0, std::f32::consts::FRAC_2_SQRT_PI);
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// `scale · exp(exponent_factor · x²)`.
fn gaussian(ctx: &mut Ctx, x: &str, exponent_factor: f32, scale: f32) -> String {
    let square = ctx.emit.binary("Mul", x, x);
    let factor = ctx.emit.scalar_f32(exponent_factor);
    let exponent = ctx.emit.binary("Mul", &square, &factor);
    let e = ctx.emit.unary("Exp", &exponent);
    let scale = ctx.emit.scalar_f32(scale);
    ctx.emit.binary("Mul", &e, &scale)
}

/// Gelu (opset 20): exact form Φ(x) + x·φ(x); tanh form differentiated directly.
pub fn gelu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let local = if ctx.string_attr("approximate", "none") == "tanh" {
        // y = x/2·(1 + tanh(u)), u = √(2/π)(x + 0.044715x³):
        // y' = (1 + t)/2 + x/2·(1 − t²)·√(2/π)(1 + 3·0.044715x²).
        let c = (2.0 / std::f32::consts::PI).sqrt();
        let square = ctx.emit.binary("Mul", &x, &x);
        let cube = ctx.emit.binary("Mul", &square, &x);
        let k = ctx.emit.scalar_f32(0.044715);
        let kc = ctx.emit.binary("Mul", &cube, &k);
        let inner = ctx.emit.binary("Add", &x, &kc);
        let cs = ctx.emit.scalar_f32(c);
        let u = ctx.emit.binary("Mul", &inner, &cs);
        let t = ctx.emit.unary("Tanh", &u);
        let one = ctx.emit.scalar_f32(1.0);
        let half = ctx.emit.scalar_f32(0.5);
        let one_plus_t = ctx.emit.binary("Add", &one, &t);
        let first = ctx.emit.binary("Mul", &one_plus_t, &half);
        let t2 = ctx.emit.binary("Mul", &t, &t);
        let sech2 = ctx.emit.binary("Sub", &one, &t2);
        let k3 = ctx.emit.scalar_f32(3.0 * 0.044715);
        let k3x2 = ctx.emit.binary("Mul", &square, &k3);
        let du = ctx.emit.binary("Add", &one, &k3x2);
        let du = ctx.emit.binary("Mul", &du, &cs);
        let half_x = ctx.emit.binary("Mul", &x, &half);
        let second = ctx.emit.binary("Mul", &half_x, &sech2);
        let second = ctx.emit.binary("Mul", &second, &du);
        ctx.emit.binary("Add", &first, &second)
    } else {
        // Φ(x) = (1 + erf(x/√2))/2, φ(x) = exp(−x²/2)/√(2π).
        let inv_sqrt2 = ctx.emit.scalar_f32(std::f32::consts::FRAC_1_SQRT_2);
        let scaled = ctx.emit.binary("Mul", &x, &inv_sqrt2);
        let e = ctx.emit.unary("Erf", &scaled);
        let one = ctx.emit.scalar_f32(1.0);
        let half = ctx.emit.scalar_f32(0.5);
        let cdf = ctx.emit.binary("Add", &one, &e);
        let cdf = ctx.emit.binary("Mul", &cdf, &half);
        let pdf = gaussian(ctx, &x, -0.5, 1.0 / (2.0 * std::f32::consts::PI).sqrt());
        let x_pdf = ctx.emit.binary("Mul", &x, &pdf);
        ctx.emit.binary("Add", &cdf, &x_pdf)
    };
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// HardSigmoid: g·alpha where 0 < alpha·x + beta < 1.
pub fn hard_sigmoid(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let (alpha, beta) = (ctx.float_attr("alpha", 0.2), ctx.float_attr("beta", 0.5));
    let inside = linear_region(ctx, alpha, beta);
    let a = ctx.emit.scalar_f32(alpha);
    let scaled = ctx.emit.binary("Mul", &g, &a);
    Ok(only_first(ctx.emit.mask(&inside, &scaled)))
}

/// Mask of `0 < alpha·x + beta < 1`.
fn linear_region(ctx: &mut Ctx, alpha: f32, beta: f32) -> String {
    let a = ctx.emit.scalar_f32(alpha);
    let b = ctx.emit.scalar_f32(beta);
    let ax = ctx.emit.binary("Mul", ctx.input(0), &a);
    let v = ctx.emit.binary("Add", &ax, &b);
    let zero = ctx.emit.scalar_f32(0.0);
    let one = ctx.emit.scalar_f32(1.0);
    let above = ctx.emit.binary("Greater", &v, &zero);
    let below = ctx.emit.binary("Less", &v, &one);
    ctx.emit.binary("And", &above, &below)
}

/// HardSwish: y = x·hardsigmoid(x) (alpha 1/6, beta 1/2):
/// y' = 0 for x < −3, 1 for x > 3, (2x + 3)/6 between.
pub fn hard_swish(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let inside = linear_region(ctx, 1.0 / 6.0, 0.5);
    let two = ctx.emit.scalar_f32(1.0 / 3.0);
    let half = ctx.emit.scalar_f32(0.5);
    let slope = ctx.emit.binary("Mul", &x, &two);
    let slope = ctx.emit.binary("Add", &slope, &half);
    let three = ctx.emit.scalar_f32(3.0);
    let above = ctx.emit.binary("GreaterOrEqual", &x, &three);
    let one = ctx.emit.scalar_f32(1.0);
    let zero = ctx.emit.scalar_f32(0.0);
    let outer = ctx.emit.op("Where", &[&above, &one, &zero], vec![]);
    let local = ctx.emit.op("Where", &[&inside, &slope, &outer], vec![]);
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// Clip: g where min ≤ x ≤ max (bounds from inputs 1, 2, or the opset-6 attributes).
pub fn clip(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let bound = |ctx: &mut Ctx, i: usize, attr: &str| -> Option<String> {
        if !ctx.input(i).is_empty() {
            Some(ctx.input(i).to_string())
        } else {
            ctx.node
                .attribute
                .iter()
                .find(|a| a.name == attr)
                .map(|a| a.f)
                .map(|v| ctx.emit.scalar_f32(v))
        }
    };
    let mut mask: Option<String> = None;
    if let Some(min) = bound(ctx, 1, "min") {
        mask = Some(ctx.emit.binary("GreaterOrEqual", &x, &min));
    }
    if let Some(max) = bound(ctx, 2, "max") {
        let below = ctx.emit.binary("LessOrEqual", &x, &max);
        mask = Some(match mask {
            Some(m) => ctx.emit.binary("And", &m, &below),
            None => below,
        });
    }
    Ok(only_first(match mask {
        Some(m) => ctx.emit.mask(&m, &g),
        None => g,
    }))
}

/// Abs: g·sign(x) (0 at 0, as PyTorch).
pub fn abs(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let sign = ctx.emit.unary("Sign", ctx.input(0));
    Ok(only_first(ctx.emit.binary("Mul", &g, &sign)))
}

/// Reciprocal: −g·y².
pub fn reciprocal(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let y = ctx.output(0).to_string();
    let square = ctx.emit.binary("Mul", &y, &y);
    let scaled = ctx.emit.binary("Mul", &g, &square);
    Ok(only_first(ctx.emit.unary("Neg", &scaled)))
}

/// Log: g/x.
pub fn log(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    Ok(only_first(ctx.emit.binary("Div", &g, ctx.input(0))))
}

/// Softsign, y = x/(1 + |x|): g/(1 + |x|)².
pub fn softsign(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let magnitude = ctx.emit.unary("Abs", ctx.input(0));
    let one = ctx.emit.scalar_f32(1.0);
    let denominator = ctx.emit.binary("Add", &one, &magnitude);
    let square = ctx.emit.binary("Mul", &denominator, &denominator);
    Ok(only_first(ctx.emit.binary("Div", &g, &square)))
}

/// Selu, y = γ·x for x > 0, γ·α·(eˣ − 1) elsewhere: g·γ, or g·(y + γ·α).
pub fn selu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let alpha = ctx.float_attr("alpha", 1.673_263_2);
    let gamma = ctx.float_attr("gamma", 1.050_701);
    let gamma_c = ctx.emit.scalar_f32(gamma);
    let linear = ctx.emit.binary("Mul", &g, &gamma_c);
    let offset = ctx.emit.scalar_f32(gamma * alpha);
    let local = ctx.emit.binary("Add", ctx.output(0), &offset);
    let curved = ctx.emit.binary("Mul", &g, &local);
    where_positive(ctx, &linear, &curved)
}

/// Celu, y = max(0, x) + min(0, α·(e^(x/α) − 1)): g for x > 0, g·e^(x/α) elsewhere.
pub fn celu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let alpha = ctx.emit.scalar_f32(ctx.float_attr("alpha", 1.0));
    let scaled = ctx.emit.binary("Div", ctx.input(0), &alpha);
    let local = ctx.emit.unary("Exp", &scaled);
    let curved = ctx.emit.binary("Mul", &g, &local);
    where_positive(ctx, &g, &curved)
}

/// Mish, y = x·tanh(softplus(x)): g·(t + x·σ(x)·(1 − t²)), t = tanh(softplus(x)).
pub fn mish(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let softplus = ctx.emit.unary("Softplus", &x);
    let t = ctx.emit.unary("Tanh", &softplus);
    let sigma = ctx.emit.unary("Sigmoid", &x);
    let one = ctx.emit.scalar_f32(1.0);
    let t2 = ctx.emit.binary("Mul", &t, &t);
    let sech2 = ctx.emit.binary("Sub", &one, &t2);
    let x_sigma = ctx.emit.binary("Mul", &x, &sigma);
    let second = ctx.emit.binary("Mul", &x_sigma, &sech2);
    let local = ctx.emit.binary("Add", &t, &second);
    Ok(only_first(ctx.emit.binary("Mul", &g, &local)))
}

/// ThresholdedRelu, y = x for x > α, 0 elsewhere: g where x > α.
pub fn thresholded_relu(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let alpha = ctx.emit.scalar_f32(ctx.float_attr("alpha", 1.0));
    let above = ctx.emit.binary("Greater", ctx.input(0), &alpha);
    Ok(only_first(ctx.emit.mask(&above, &g)))
}
