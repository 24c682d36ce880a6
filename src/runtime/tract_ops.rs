//! upat's own gradient kernels (`ai.upat.MaxPoolGrad`, `ai.upat.ReluGrad`)
//! as tract ops, registered with upat's tract loader: the arithmetic of
//! `runtime::kernels`, as ONNX Runtime runs it through `ort_ops`. tract's
//! portable forms of the same steps (MaxPool's Indices output, `Mod` and
//! `ScatterElements`; `Where(Greater(x, 0), g, 0)`) run on generic paths.
//! And `ai.upat.MaxPool2x2`, the forward 2×2, stride-2 MaxPool with
//! tract's own values: tract runs stride-2 windows on a scalar path that
//! checks every cell's bounds ([`fast_max_pools`] puts it in the graph).
//!
//! tract looks ops up by name alone; a node of another domain with one of
//! these names (ONNX Runtime's training ops have a `ReluGrad`, with its
//! inputs the other way round) is refused, not run as upat's.

use super::kernels::{max_pool_2x2, relu_backward, Window, Windows};
use crate::onnx::grad::specialise::{MAX_POOL_GRAD, RELU_GRAD, UPAT_DOMAIN};
use crate::onnx::pb;
use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Adds upat's kernels to `onnx`'s op register.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(RELU_GRAD, relu_grad);
    onnx.op_register.insert(MAX_POOL_GRAD, max_pool_grad);
    onnx.op_register.insert(MAX_POOL_2X2, max_pool_2x2_op);
}

/// The forward 2×2, stride-2 MaxPool.
const MAX_POOL_2X2: &str = "MaxPool2x2";

/// Replaces each top-level `MaxPool` of a 2×2 window, stride 2, no
/// padding or dilation, floor mode and a single output by
/// `ai.upat.MaxPool2x2`, which tract then runs with the same values.
pub fn fast_max_pools(proto: &mut pb::ModelProto) {
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    let mut rewritten = false;
    for node in graph.node.iter_mut().filter(|n| is_plain_2x2_pool(n)) {
        node.op_type = MAX_POOL_2X2.into();
        node.domain = UPAT_DOMAIN.into();
        node.attribute.clear();
        rewritten = true;
    }
    if rewritten && !proto.opset_import.iter().any(|o| o.domain == UPAT_DOMAIN) {
        proto.opset_import.push(pb::OperatorSetIdProto {
            domain: UPAT_DOMAIN.into(),
            version: 1,
        });
    }
}

fn is_plain_2x2_pool(node: &pb::NodeProto) -> bool {
    if node.op_type != "MaxPool" || !node.domain.is_empty() || node.output.len() != 1 {
        return false;
    }
    let ints = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
    };
    let int = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let auto_pad = node
        .attribute
        .iter()
        .find(|a| a.name == "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned());
    let known = [
        "kernel_shape",
        "strides",
        "pads",
        "dilations",
        "ceil_mode",
        "auto_pad",
        "storage_order",
    ];
    node.attribute
        .iter()
        .all(|a| known.contains(&a.name.as_str()))
        && ints("kernel_shape").as_deref() == Some(&[2, 2])
        && ints("strides").as_deref() == Some(&[2, 2])
        && ints("pads").is_none_or(|p| p.iter().all(|&v| v == 0))
        && ints("dilations").is_none_or(|d| d.iter().all(|&v| v == 1))
        && int("ceil_mode").unwrap_or(0) == 0
        && int("storage_order").unwrap_or(0) == 0
        && auto_pad.is_none_or(|p| p == "NOTSET" || p == "VALID")
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

fn max_pool_2x2_op(_: &ParsingContext, node: &NodeProto) -> Built {
    foreign(node)?;
    Ok((inference_wrap(MaxPool2x2, 1, halved_plane), vec![]))
}

/// MaxPool2x2 reads an f32 `[N, C, H, W]` and writes `[N, C, H/2, W/2]`
/// (the halved sides come from [`TypedOp::output_facts`]).
fn halved_plane<'p>(
    _: &dyn Op,
    s: &mut Solver,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
) -> InferenceResult {
    check_input_arity(inputs, 1)?;
    check_output_arity(outputs, 1)?;
    s.equals(&inputs[0].datum_type, f32::datum_type())?;
    s.equals(&outputs[0].datum_type, f32::datum_type())?;
    s.equals(&inputs[0].rank, 4)?;
    s.equals(&outputs[0].rank, 4)?;
    s.equals(&inputs[0].shape[0], &outputs[0].shape[0])?;
    s.equals(&inputs[0].shape[1], &outputs[0].shape[1])?;
    // H/2 and W/2: the typed op's output_facts, from the concrete input.
    Ok(())
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

/// `MaxPool2x2(x) → y`: [`max_pool_2x2`] over every plane.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MaxPool2x2;

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        MAX_POOL_2X2.into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for MaxPool2x2 {
    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if inputs.len() != 1 {
            bail!("MaxPool2x2: expected 1 input, got {}", inputs.len());
        }
        let (x, xs) = (
            inputs[0].try_as_plain_ram()?.as_slice::<f32>()?,
            inputs[0].shape(),
        );
        let [n, c, h, w] = xs else {
            bail!("MaxPool2x2: input {xs:?} must be [N, C, H, W]");
        };
        let (oh, ow) = (h / 2, w / 2);
        let mut y = vec![0f32; n * c * oh * ow];
        if oh > 0 && ow > 0 {
            for (x, y) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
                max_pool_2x2(x, (*h, *w), y);
            }
        }
        Ok(tvec!(float_tensor(&[*n, *c, oh, ow], y)?))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        // A pure function of its input: constant folding may run it.
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for MaxPool2x2 {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        if shape.rank() != 4 {
            bail!("MaxPool2x2: input {shape:?} must be [N, C, H, W]");
        }
        let dims: TVec<TDim> = tvec![
            shape[0].clone(),
            shape[1].clone(),
            shape[2].clone() / 2,
            shape[3].clone() / 2,
        ];
        Ok(tvec!(f32::fact(dims)))
    }
}

same_shape_as_x_op!(ReluGrad, RELU_GRAD);
same_shape_as_x_op!(MaxPoolGrad, MAX_POOL_GRAD);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::grad::emit::attr_ints;
    use crate::runtime::tract::{Threads, TractSession};
    use crate::runtime::{Feed, Session};

    fn pool_model(attributes: Vec<pb::AttributeProto>) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(pb::GraphProto {
                name: "pool".into(),
                node: vec![pb::NodeProto {
                    op_type: "MaxPool".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    attribute: attributes,
                    ..Default::default()
                }],
                input: vec![crate::onnx::tensor_value_info("x", 1, &[None; 4])],
                output: vec![crate::onnx::tensor_value_info("y", 1, &[None; 4])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_plain_2x2_stride_2_pools_are_rewritten() {
        let plain = || {
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ]
        };
        let rewritten = |attributes: Vec<pb::AttributeProto>| {
            let mut proto = pool_model(attributes);
            fast_max_pools(&mut proto);
            proto.graph.unwrap().node[0].op_type == MAX_POOL_2X2
        };
        assert!(rewritten(plain()));
        let mut zero_pads = plain();
        zero_pads.push(attr_ints("pads", &[0, 0, 0, 0]));
        assert!(rewritten(zero_pads));
        for (name, values) in [
            ("pads", vec![0, 0, 1, 1]),
            ("dilations", vec![2, 2]),
            ("strides", vec![1, 1]),
        ] {
            let mut attributes = plain();
            attributes.retain(|a| a.name != name);
            attributes.push(attr_ints(name, &values));
            assert!(!rewritten(attributes), "{name} {values:?}");
        }
        let mut ceil = plain();
        ceil.push(pb::AttributeProto {
            name: "ceil_mode".into(),
            i: 1,
            r#type: 2,
            ..Default::default()
        });
        assert!(!rewritten(ceil));
    }

    /// The kernel gives tract's own MaxPool values bit for bit: odd sides,
    /// ties, signed zeros, NaN and −∞ included.
    #[test]
    fn the_2x2_kernel_gives_tracts_own_values() {
        let proto = pool_model(vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ]);
        let shape = [2, 3, 7, 9];
        let specials = [f32::NAN, f32::NEG_INFINITY, -0.0, 0.0, f32::MIN, 1.0];
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| match i % 11 {
                0..=5 => specials[(i / 11) % specials.len()],
                _ => ((i * 7919) % 17) as f32 * 0.25 - 2.0,
            })
            .collect();
        let mut ours =
            TractSession::new(&proto, Threads::Rows(std::num::NonZeroUsize::MIN)).unwrap();
        let ours = ours.run(&[Feed::F32(&x, &shape)]).unwrap().remove(0);
        let theirs = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .unwrap()
            .with_input_fact(0, f32::fact(shape).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec!(Tensor::from_shape(&shape, &x).unwrap().into_tvalue()))
            .unwrap();
        let theirs = theirs[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(ours.shape, theirs.shape());
        let bits = |v: &mut dyn Iterator<Item = f32>| v.map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(&mut ours.values.iter().copied()),
            bits(&mut theirs.iter().copied())
        );
    }
}
