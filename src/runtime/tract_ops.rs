//! upat's own gradient kernels (`ai.upat.MaxPoolGrad`, `ai.upat.ReluGrad`)
//! as tract ops, registered with upat's tract loader: the arithmetic of
//! `runtime::kernels`, as ONNX Runtime runs it through `ort_ops`. tract's
//! portable forms of the same steps (MaxPool's Indices output, `Mod` and
//! `ScatterElements`; `Where(Greater(x, 0), g, 0)`) run on generic paths.
//!
//! tract looks ops up by name alone; a node of another domain with one of
//! these names (ONNX Runtime's training ops have a `ReluGrad`, with its
//! inputs the other way round) is refused, not run as upat's.

use super::kernels::{relu_backward, Window, Windows};
use crate::onnx::grad::specialise::{MAX_POOL_GRAD, RELU_GRAD, UPAT_DOMAIN};
use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Adds upat's kernels to `onnx`'s op register.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(RELU_GRAD, relu_grad);
    onnx.op_register.insert(MAX_POOL_GRAD, max_pool_grad);
}

/// A builder's answer for a node that is not upat's.
fn foreign(node: &NodeProto) -> TractResult<()> {
    if node.domain == UPAT_DOMAIN {
        Ok(())
    } else {
        bail!(
            "{} of domain `{}` is not supported (upat's own op of that name is in `{UPAT_DOMAIN}`)",
            node.op_type,
            node.domain
        )
    }
}

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

fn relu_grad(_: &ParsingContext, node: &NodeProto) -> Built {
    foreign(node)?;
    Ok((inference_wrap(ReluGrad, 1, same_shape_as_x), vec![]))
}

fn max_pool_grad(_: &ParsingContext, node: &NodeProto) -> Built {
    foreign(node)?;
    let window = Window::new(
        node.get_attr_vec("kernel_shape")?,
        node.get_attr_vec("strides")?,
        node.get_attr_vec("pads")?,
        node.get_attr_vec("dilations")?,
    )
    .map_err(|e| format_err!("{e}"))?;
    Ok((
        inference_wrap(MaxPoolGrad { window }, 1, same_shape_as_x),
        vec![],
    ))
}

/// Both ops read (x, g) and write dx, of x's type and shape.
fn same_shape_as_x<'p>(
    _: &dyn Op,
    s: &mut Solver,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
) -> InferenceResult {
    check_input_arity(inputs, 2)?;
    check_output_arity(outputs, 1)?;
    s.equals(&inputs[0].datum_type, f32::datum_type())?;
    s.equals(&inputs[1].datum_type, f32::datum_type())?;
    s.equals(&outputs[0].datum_type, f32::datum_type())?;
    s.equals(&inputs[0].shape, &outputs[0].shape)?;
    Ok(())
}

/// The f32 values and shapes of (x, g).
fn two_floats(inputs: &TVec<TValue>) -> TractResult<[(&[f32], &[usize]); 2]> {
    if inputs.len() != 2 {
        bail!("expected 2 inputs, got {}", inputs.len());
    }
    fn read(t: &TValue) -> TractResult<(&[f32], &[usize])> {
        Ok((t.try_as_plain_ram()?.as_slice::<f32>()?, t.shape()))
    }
    Ok([read(&inputs[0])?, read(&inputs[1])?])
}

/// `values` as a tensor of `shape`, without a copy.
fn float_tensor(shape: &[usize], values: Vec<f32>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, values)?.into_tvalue())
}

/// `ReluGrad(x, g) → dx`: `g` where x > 0, else 0.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReluGrad;

impl EvalOp for ReluGrad {
    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [(x, x_shape), (g, g_shape)] = two_floats(&inputs)?;
        if x_shape != g_shape {
            bail!("ReluGrad: input {x_shape:?} and gradient {g_shape:?} must have one shape");
        }
        let mut dx = vec![0f32; x.len()];
        relu_backward(x, g, &mut dx);
        Ok(tvec!(float_tensor(x_shape, dx)?))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        // A pure function of its inputs: constant folding may run it.
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

/// `MaxPoolGrad(x, g) → dx`: each `g` added at its window's first maximum
/// of `x` ([`Windows::backward`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MaxPoolGrad {
    window: Window,
}

impl EvalOp for MaxPoolGrad {
    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [(x, xs), (g, gs)] = two_floats(&inputs)?;
        if xs.len() != 4 || gs.len() != 4 || xs[..2] != gs[..2] {
            bail!("MaxPoolGrad: input {xs:?} and gradient {gs:?} must be [N, C, H, W] and [N, C, OH, OW]");
        }
        let mut dx = vec![0f32; x.len()];
        let (plane, g_plane) = (xs[2] * xs[3], gs[2] * gs[3]);
        if plane > 0 && g_plane > 0 {
            let dims = |a: usize, b: usize| -> TractResult<(i64, i64)> {
                Ok((i64::try_from(a)?, i64::try_from(b)?))
            };
            let windows = Windows::new(&self.window, dims(xs[2], xs[3])?, dims(gs[2], gs[3])?);
            for ((x, g), dx) in x
                .chunks_exact(plane)
                .zip(g.chunks_exact(g_plane))
                .zip(dx.chunks_exact_mut(plane))
            {
                windows.backward(x, g, dx);
            }
        }
        Ok(tvec!(float_tensor(xs, dx)?))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        // A pure function of its inputs: constant folding may run it.
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

/// The `Op` and `TypedOp` parts both ops share: a name, and an output of
/// x's type and shape.
macro_rules! same_shape_as_x_op {
    ($op:ty, $name:expr) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            fn as_typed(&self) -> Option<&dyn TypedOp> {
                Some(self)
            }
        }

        impl TypedOp for $op {
            fn as_op(&self) -> &dyn Op {
                self
            }

            fn as_op_mut(&mut self) -> &mut dyn Op {
                self
            }

            fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                Ok(tvec!(inputs[0].without_value()))
            }
        }
    };
}

same_shape_as_x_op!(ReluGrad, RELU_GRAD);
same_shape_as_x_op!(MaxPoolGrad, MAX_POOL_GRAD);
