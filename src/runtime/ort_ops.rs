//! upat's own ONNX Runtime kernels (domain `ai.upat`), registered with
//! every CPU session: gradient steps that ONNX Runtime's standard ops run
//! on slow paths (`onnx::grad::specialise`).
//!
//! A kernel runs inside ONNX Runtime's call, so it must never panic: every
//! shape is checked and a mismatch is returned as an error.

use super::kernels::{relu_backward, Window, Windows};
use crate::onnx::grad::specialise::{MAX_POOL_GRAD, RELU_GRAD, UPAT_DOMAIN};
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

/// The `ai.upat` domain with every upat kernel.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(UPAT_DOMAIN)?
        .add(MaxPoolGrad)?
        .add(ReluGrad)
}

/// Every upat kernel reads two float tensors (a forward input and a
/// gradient) and writes one.
const TWO_FLOAT_INPUTS: [OperatorInput; 2] = [
    OperatorInput::required(TensorElementType::Float32),
    OperatorInput::required(TensorElementType::Float32),
];

/// A mutable output buffer shared with ONNX Runtime's worker threads,
/// each of which writes only its own part of it.
struct Shared(*mut f32);
// SAFETY: the parts written by different tasks are disjoint, and the
// buffer outlives `par_for`, which returns after every task.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `ReluGrad(x, g) → dx`: `g` where x > 0, else 0 (ReLU's backward, as
/// `Where(Greater(x, 0), g, 0)` computes it, NaN x included), for `x` and
/// `g` of one shape.
struct ReluGrad;

/// Elements per task of `ReluGrad`.
const RELU_CHUNK: usize = 1 << 15;

impl Operator for ReluGrad {
    type Kernel<'attr> = ReluGradKernel;

    fn name(&self) -> &str {
        RELU_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        TWO_FLOAT_INPUTS
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<ReluGradKernel> {
        Ok(ReluGradKernel)
    }
}

struct ReluGradKernel;

impl Kernel for ReluGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = || ort::Error::new("ReluGrad: missing input");
        let x_value = ctx.input(0)?.ok_or_else(missing)?;
        let g_value = ctx.input(1)?.ok_or_else(missing)?;
        let (x_shape, x) = x_value.try_extract_tensor::<f32>()?;
        let (g_shape, g) = g_value.try_extract_tensor::<f32>()?;
        if x_shape.to_vec() != g_shape.to_vec() || x.len() != g.len() {
            return Err(ort::Error::new(format!(
                "ReluGrad: input {x_shape} and gradient {g_shape} must have one shape"
            )));
        }
        let mut out = ctx
            .output(0, x_shape.to_vec())?
            .ok_or_else(|| ort::Error::new("ReluGrad: no output"))?;
        let (_, dx) = out.try_extract_tensor_mut::<f32>()?;
        if dx.len() != x.len() {
            return Err(ort::Error::new("ReluGrad: output of the wrong size"));
        }
        let len = x.len();
        let base = Shared(dx.as_mut_ptr());
        let chunks = len.div_ceil(RELU_CHUNK);
        ctx.par_for(chunks, chunks, |k| {
            let base = &base;
            let range = k * RELU_CHUNK..((k + 1) * RELU_CHUNK).min(len);
            // SAFETY: chunk `k` of `dx` is written by this task only, and
            // lies inside the buffer of `len` values.
            let dx =
                unsafe { std::slice::from_raw_parts_mut(base.0.add(range.start), range.len()) };
            relu_backward(&x[range.clone()], &g[range], dx);
        })
    }
}

/// `MaxPoolGrad(x, g) → dx`: for a 2-D MaxPool of input `x` [N, C, H, W]
/// and output gradient `g` [N, C, OH, OW], adds each `g` to the first
/// maximal cell of its window (scanning rows, then columns, as ONNX
/// Runtime's MaxPool picks its index); windows past the padding are
/// skipped. Attributes: `kernel_shape`, `strides`, `pads`, `dilations`.
struct MaxPoolGrad;

impl Operator for MaxPoolGrad {
    type Kernel<'attr> = MaxPoolGradKernel;

    fn name(&self) -> &str {
        MAX_POOL_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        TWO_FLOAT_INPUTS
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<MaxPoolGradKernel> {
        let read = |name: &str| -> ort::Result<Vec<i64>> {
            info.get(name)
                .ok_or_else(|| ort::Error::new(format!("MaxPoolGrad needs `{name}`")))
        };
        let window = Window::new(
            read("kernel_shape")?,
            read("strides")?,
            read("pads")?,
            read("dilations")?,
        )
        .map_err(ort::Error::new)?;
        Ok(MaxPoolGradKernel { window })
    }
}

struct MaxPoolGradKernel {
    window: Window,
}

impl Kernel for MaxPoolGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = || ort::Error::new("MaxPoolGrad: missing input");
        let x_value = ctx.input(0)?.ok_or_else(missing)?;
        let g_value = ctx.input(1)?.ok_or_else(missing)?;
        let (x_shape, x) = x_value.try_extract_tensor::<f32>()?;
        let (g_shape, g) = g_value.try_extract_tensor::<f32>()?;
        let (xs, gs): (Vec<i64>, Vec<i64>) = (x_shape.to_vec(), g_shape.to_vec());
        if xs.len() != 4
            || gs.len() != 4
            || xs[..2] != gs[..2]
            || xs.iter().chain(&gs).any(|&d| d < 0)
        {
            return Err(ort::Error::new(format!(
                "MaxPoolGrad: input {xs:?} and gradient {gs:?} must be [N, C, H, W] and [N, C, OH, OW]"
            )));
        }
        let planes = (xs[0] * xs[1]) as usize;
        let (plane, g_plane) = ((xs[2] * xs[3]) as usize, (gs[2] * gs[3]) as usize);
        let mut out = ctx
            .output(0, xs.clone())?
            .ok_or_else(|| ort::Error::new("MaxPoolGrad: no output"))?;
        let (_, dx) = out.try_extract_tensor_mut::<f32>()?;
        if planes == 0 || plane == 0 {
            dx.fill(0.0);
            return Ok(());
        }
        let base = Shared(dx.as_mut_ptr());
        let windows = Windows::new(&self.window, (xs[2], xs[3]), (gs[2], gs[3]));
        ctx.par_for(planes, planes, |p| {
            let base = &base;
            // SAFETY: plane `p` of `dx` is written by this task only, and
            // lies inside the buffer of `planes · plane` values.
            let dx = unsafe { std::slice::from_raw_parts_mut(base.0.add(p * plane), plane) };
            windows.backward(
                &x[p * plane..(p + 1) * plane],
                &g[p * g_plane..(p + 1) * g_plane],
                dx,
            );
        })
    }
}
