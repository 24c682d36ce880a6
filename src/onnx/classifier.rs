//! The model contract of `upat-audit`: one float image input `[N, C, H, W]`,
//! one logits output `[N, K]`. `ClassifierGraph::prepare` picks those tensors,
//! checks the contract, folds `--normalize` into the graph and drops every
//! other output, so backends see exactly one input and one output.

use super::{pb, Dim, OnnxModel, TensorInfo};
use crate::error::{Error, Result};

/// ONNX's code for 32-bit float.
const FLOAT: i32 = 1;

/// Per-channel `(x - mean) / std`, applied inside the graph so that attack
/// budgets are always in `[0, 1]` pixel units.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl std::str::FromStr for Normalization {
    type Err = Error;

    /// `MEAN:STD`, each a comma-separated list of one value or one per channel.
    fn from_str(s: &str) -> Result<Self> {
        let usage = |why: &str| {
            Error::Usage(format!(
                "--normalize {s}: {why}; expected MEAN:STD with comma-separated values, \
                 e.g. 0.4914,0.4822,0.4465:0.2470,0.2435,0.2616"
            ))
        };
        let (mean, std) = s.split_once(':').ok_or_else(|| usage("missing `:`"))?;
        let parse = |list: &str| -> Result<Vec<f32>> {
            list.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f32>()
                        .map_err(|_| usage(&format!("`{v}` is not a number")))
                })
                .collect()
        };
        let (mean, std) = (parse(mean)?, parse(std)?);
        if mean.len() != std.len() {
            return Err(usage("MEAN and STD have different lengths"));
        }
        if std.iter().any(|&v| !(v > 0.0 && v.is_finite())) || mean.iter().any(|v| !v.is_finite()) {
            return Err(usage("STD values must be positive and all values finite"));
        }
        Ok(Normalization { mean, std })
    }
}

/// The order of the image input's axes (`--layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// NHWC when the last axis has 1, 3 or 4 entries and the second does
    /// not (Keras and TensorFlow exports), else NCHW.
    #[default]
    Auto,
    Nchw,
    Nhwc,
}

impl std::str::FromStr for Layout {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(Layout::Auto),
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(Error::Usage(format!(
                "--layout `{text}`: give auto, nchw or nhwc"
            ))),
        }
    }
}

impl Layout {
    /// Whether an input declared as `dims` (rank 4) is channels-last.
    fn is_nhwc(self, dims: &[Dim]) -> bool {
        let channel_like = |d: &Dim| matches!(fixed(d), Some(1 | 3 | 4));
        match self {
            Layout::Nchw => false,
            Layout::Nhwc => true,
            Layout::Auto => channel_like(&dims[3]) && !channel_like(&dims[1]),
        }
    }
}

/// What the image input accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLayout {
    pub name: String,
    /// The model takes `[N, H, W, C]`: the prepared graph takes `[N, C, H, W]`
    /// and transposes it first, so data, attacks, budgets and gradients stay
    /// NCHW.
    pub channels_last: bool,
    /// `Some(b)` when the model was exported with a fixed batch size `b`.
    pub fixed_batch: Option<usize>,
    /// Declared `C, H, W`; `None` where symbolic.
    pub chw: [Option<usize>; 3],
}

/// What the NCHW input fed through a transpose is called, after the
/// model's own NHWC input.
const NCHW_SUFFIX: &str = "__upat_nchw";

impl InputLayout {
    /// The image input's name in the model file (`name` is the prepared
    /// graph's, which differs for an NHWC model fed through a transpose).
    pub fn model_name(&self) -> &str {
        match self.channels_last {
            true => self.name.strip_suffix(NCHW_SUFFIX).unwrap_or(&self.name),
            false => &self.name,
        }
    }
}

/// A model reduced to the classifier contract, ready for any backend.
#[derive(Debug, Clone)]
pub struct ClassifierGraph {
    /// The model file it was prepared from, for messages.
    pub path: std::path::PathBuf,
    /// One input (the image), one output (the logits).
    pub proto: pb::ModelProto,
    pub input: InputLayout,
    pub output_name: String,
    /// `K` when the output's class dimension is declared.
    pub declared_classes: Option<usize>,
}

fn pick<'a>(
    model: &OnnxModel,
    kind: &str,
    flag: &str,
    tensors: &'a [TensorInfo],
    wanted: Option<&str>,
) -> Result<&'a TensorInfo> {
    let names = || {
        tensors
            .iter()
            .map(|t| format!("`{}` {}", t.name, t.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (wanted, tensors) {
        (Some(w), _) => tensors.iter().find(|t| t.name == w).ok_or_else(|| {
            Error::model(
                &model.path,
                format!("has no {kind} named `{w}`; its {kind}s are: {}", names()),
            )
        }),
        (None, [only]) => Ok(only),
        (None, []) => Err(Error::model(&model.path, format!("has no {kind}"))),
        (None, _) => Err(Error::model(
            &model.path,
            format!(
                "has several {kind}s ({}); choose one with {flag} NAME",
                names()
            ),
        )),
    }
}

impl InputLayout {
    /// The declared input sizes must fit the memory ceiling before anything
    /// is built from them: one image at most 1/64 of it (room for a batch
    /// and a network's activations), a fixed batch of images all of it.
    fn check_declared_sizes(&self, model: &OnnxModel) -> Result<()> {
        let ceiling = crate::limits::max_bytes()?;
        let known: Vec<usize> = self.chw.iter().map(|d| d.unwrap_or(1)).collect();
        let image_bytes = crate::limits::product(&known).and_then(|n| n.checked_mul(4));
        let too_large = |what: String, limit: u64| {
            Error::model(
                &model.path,
                format!(
                    "declares {what}, more than upat works with under its memory ceiling ({} for this; \
                     UPAT_MAX_MEMORY raises it): is the input shape right?",
                    crate::limits::human(limit as usize)
                ),
            )
        };
        let describe = |d: Option<usize>| d.map_or("?".to_string(), |v| v.to_string());
        let chw = self.chw.map(describe).join("x");
        if image_bytes.is_none_or(|b| b as u64 > ceiling / 64) {
            return Err(too_large(format!("images of {chw}"), ceiling / 64));
        }
        if let Some(batch) = self.fixed_batch {
            let batch_bytes = image_bytes.and_then(|b| b.checked_mul(batch));
            if batch_bytes.is_none_or(|b| b as u64 > ceiling) {
                return Err(too_large(
                    format!("a fixed batch of {batch} images of {chw}"),
                    ceiling,
                ));
            }
        }
        Ok(())
    }
}

fn fixed(d: &Dim) -> Option<usize> {
    match d {
        Dim::Fixed(v) if *v > 0 => Some(*v as usize),
        _ => None,
    }
}

impl ClassifierGraph {
    /// Selects the image input and logits output, checks the contract and
    /// rewrites the graph (normalisation folded in, other outputs dropped),
    /// detecting the input's layout.
    pub fn prepare(
        model: &OnnxModel,
        input: Option<&str>,
        output: Option<&str>,
        normalization: Option<&Normalization>,
    ) -> Result<Self> {
        Self::prepare_as(model, input, output, normalization, Layout::Auto)
    }

    /// [`Self::prepare`] with the input's layout given (`--layout`).
    pub fn prepare_as(
        model: &OnnxModel,
        input: Option<&str>,
        output: Option<&str>,
        normalization: Option<&Normalization>,
        layout: Layout,
    ) -> Result<Self> {
        let inputs = model.inputs();
        let outputs = model.outputs();
        let image = pick(model, "input", "--input", &inputs, input)?.clone();
        let logits = pick(model, "output", "--output", &outputs, output)?.clone();
        if inputs.len() > 1 {
            let others: Vec<_> = inputs
                .iter()
                .filter(|i| i.name != image.name)
                .map(|i| i.name.as_str())
                .collect();
            return Err(Error::model(
                &model.path,
                format!("needs inputs other than the image ({}), which upat-audit cannot feed; export the model with the image as its only input", others.join(", ")),
            ));
        }
        if image.elem_type != FLOAT {
            return Err(Error::model(
                &model.path,
                format!(
                    "input `{}` is {}; upat-audit needs a float32 image input [N,C,H,W] with pixels in [0,1] \
                     (export the model in float32, with any quantisation or casting inside the graph)",
                    image.name,
                    image.describe()
                ),
            ));
        }
        if logits.elem_type != FLOAT {
            return Err(Error::model(
                &model.path,
                format!(
                    "output `{}` is {}; logits must be float32",
                    logits.name,
                    logits.describe()
                ),
            ));
        }
        let dims = image
            .dims
            .clone()
            .unwrap_or_else(|| vec![Dim::Symbolic(String::new()); 4]);
        if dims.len() != 4 {
            return Err(Error::model(
                &model.path,
                format!("input `{}` is {}: rank {}, but an image classifier input must be [N,C,H,W] (rank 4)", image.name, image.describe(), dims.len()),
            ));
        }
        let declared_classes = match &logits.dims {
            Some(d) if d.len() != 2 => {
                return Err(Error::model(
                    &model.path,
                    format!(
                        "output `{}` is {}; logits must be [N,K] (rank 2)",
                        logits.name,
                        logits.describe()
                    ),
                ))
            }
            Some(d) => fixed(&d[1]),
            None => None,
        };
        let channels_last = layout.is_nhwc(&dims);
        let chw = if channels_last {
            [fixed(&dims[3]), fixed(&dims[1]), fixed(&dims[2])]
        } else {
            [fixed(&dims[1]), fixed(&dims[2]), fixed(&dims[3])]
        };
        let layout = InputLayout {
            name: image.name.clone(),
            channels_last,
            fixed_batch: fixed(&dims[0]),
            chw,
        };
        layout.check_declared_sizes(model)?;
        let mut proto = model.proto.clone();
        let graph = proto.graph.as_mut().expect("OnnxModel has a graph");
        let weights: std::collections::HashSet<String> =
            graph.initializer.iter().map(|t| t.name.clone()).collect();
        graph.input.retain(|i| !weights.contains(&i.name));
        graph.output.retain(|o| o.name == logits.name);
        let mut layout = layout;
        if layout.channels_last {
            layout.name = transpose_input(graph, &layout);
        }
        if let Some(norm) = normalization {
            let channels = layout.chw[0].unwrap_or(norm.mean.len());
            if norm.mean.len() != 1 && norm.mean.len() != channels {
                return Err(Error::Usage(format!(
                    "--normalize has {} values per statistic but the model's input has {channels} channels",
                    norm.mean.len()
                )));
            }
            fold_normalization(graph, &layout.name, norm);
        }
        Ok(ClassifierGraph {
            path: model.path.clone(),
            proto,
            input: layout,
            output_name: logits.name,
            declared_classes,
        })
    }

    /// Checks that images of `[C, H, W]` fit the declared input shape.
    pub fn check_image_shape(&self, model: &OnnxModel, image_shape: [usize; 3]) -> Result<()> {
        let names = ["channels", "height", "width"];
        for ((declared, actual), what) in self.input.chw.iter().zip(image_shape).zip(names) {
            if let Some(d) = declared {
                if *d != actual {
                    return Err(Error::model(
                        &model.path,
                        format!(
                            "expects images of {} but the data has {} {what} where the model wants {d} \
                             (data images are {}x{}x{}); audit it on data of the shape it was trained for",
                            self.describe_chw(),
                            actual,
                            image_shape[0],
                            image_shape[1],
                            image_shape[2]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn describe_chw(&self) -> String {
        let d = |v: Option<usize>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "{}x{}x{}",
            d(self.input.chw[0]),
            d(self.input.chw[1]),
            d(self.input.chw[2])
        )
    }
}

/// Replaces the NHWC image input by an NCHW one, `[N, C, H, W]`, followed by
/// `Transpose(perm = [0, 2, 3, 1])` into the model's own input name; returns
/// the new input's name.
fn transpose_input(graph: &mut pb::GraphProto, layout: &InputLayout) -> String {
    let nchw = format!("{}{NCHW_SUFFIX}", layout.name);
    let dim = |d: Option<usize>| d.map(|v| v as i64);
    let dims = [
        dim(layout.fixed_batch),
        dim(layout.chw[0]),
        dim(layout.chw[1]),
        dim(layout.chw[2]),
    ];
    let declared = crate::onnx::tensor_value_info(&nchw, FLOAT, &dims);
    for input in graph.input.iter_mut().filter(|i| i.name == layout.name) {
        // Unknown spatial sizes stay symbolic rather than becoming `N`.
        *input = declared.clone();
        if let Some(pb::type_proto::Value::TensorType(t)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(shape) = t.shape.as_mut() {
                for (d, declared) in shape.dim.iter_mut().zip(dims).skip(1) {
                    if declared.is_none() {
                        d.value = Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                            String::new(),
                        ));
                    }
                }
            }
        }
    }
    let transpose = pb::NodeProto {
        op_type: "Transpose".into(),
        name: "upat_nchw_to_nhwc".into(),
        input: vec![nchw.clone()],
        output: vec![layout.name.clone()],
        attribute: vec![pb::AttributeProto {
            name: "perm".into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: vec![0, 2, 3, 1],
            ..Default::default()
        }],
        ..Default::default()
    };
    graph.node.insert(0, transpose);
    nchw
}

/// Inserts `Div(Sub(x, mean), std)` between the input and its consumers.
fn fold_normalization(graph: &mut pb::GraphProto, input: &str, norm: &Normalization) {
    let normalized = format!("{input}__upat_normalized");
    let centred = format!("{input}__upat_centred");
    for node in &mut graph.node {
        for name in node.input.iter_mut().filter(|n| *n == input) {
            *name = normalized.clone();
        }
    }
    let constant = |name: String, values: &[f32]| pb::TensorProto {
        name,
        dims: vec![1, values.len() as i64, 1, 1],
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    };
    let mean_name = format!("{input}__upat_mean");
    let std_name = format!("{input}__upat_std");
    graph
        .initializer
        .push(constant(mean_name.clone(), &norm.mean));
    graph
        .initializer
        .push(constant(std_name.clone(), &norm.std));
    let node = |op: &str, inputs: [&str; 2], output: &str| pb::NodeProto {
        op_type: op.into(),
        name: format!("upat_normalize_{}", op.to_lowercase()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let prefix = [
        node("Sub", [input, &mean_name], &centred),
        node("Div", [&centred, &std_name], &normalized),
    ];
    graph.node.splice(0..0, prefix);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_parses_and_rejects() {
        let n: Normalization = "0.5,0.5,0.5:0.25,0.25,0.25".parse().unwrap();
        assert_eq!(n.mean, vec![0.5; 3]);
        assert!("0.5:0".parse::<Normalization>().is_err());
        assert!("0.5,0.1:0.2".parse::<Normalization>().is_err());
        assert!("0.5".parse::<Normalization>().is_err());
        assert!("a:1".parse::<Normalization>().is_err());
    }
}
