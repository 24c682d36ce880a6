//! A trained [`Network`] as ONNX (DESIGN §5): opset 17, IR version 8, input
//! `input` `[N, C, H, W]` float in [0, 1] (normalisation inside the graph),
//! output `logits` `[N, K]`, dynamic batch, and `upat.*` metadata. Written by
//! the project's own protobuf types, node by node, from the network's layers.

use super::model::{BasicBlock, ConvBn, HeadFeatures, Network, BN_EPS};
use crate::onnx::grad::emit::{attr_float, attr_int, attr_ints};
use crate::onnx::{pb, tensor_value_info};
use tch::{nn, Kind, Tensor};

/// What the exported file says about itself.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// `upat.method`, e.g. `upat+at`.
    pub method: String,
    /// `upat.dataset`.
    pub dataset: String,
    /// `[C, H, W]` of the inputs the model was trained on.
    pub image_shape: [i64; 3],
    /// `upat.train_config`: the run's config as JSON.
    pub train_config: String,
}

struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    counter: usize,
}

fn tensor_proto(name: &str, t: &Tensor) -> pb::TensorProto {
    let t = t
        .detach()
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let values =
        Vec::<f32>::try_from(t.flatten(0, -1)).expect("a float tensor converts to Vec<f32>");
    pb::TensorProto {
        name: name.into(),
        dims: t.size(),
        data_type: 1,
        float_data: values,
        ..Default::default()
    }
}

impl GraphBuilder {
    fn weight(&mut self, name: &str, t: &Tensor) -> String {
        self.initializers.push(tensor_proto(name, t));
        name.to_string()
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<pb::AttributeProto>,
        output: Option<&str>,
    ) -> String {
        self.counter += 1;
        let output = output.map_or_else(
            || format!("{}_{}", op.to_lowercase(), self.counter),
            str::to_string,
        );
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: format!("{op}_{}", self.counter),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    fn conv_bn(&mut self, x: &str, layer: &ConvBn, prefix: &str) -> String {
        let w = self.weight(&format!("{prefix}.conv.weight"), &layer.conv.conv.ws);
        let kernel = layer.conv.conv.ws.size()[2];
        let p = layer.conv.padding;
        let conv = self.node(
            "Conv",
            &[x, &w],
            vec![
                attr_ints("kernel_shape", &[kernel, kernel]),
                attr_ints("strides", &[layer.conv.stride; 2]),
                attr_ints("pads", &[p; 4]),
            ],
            None,
        );
        let bn = &layer.bn;
        let scale = self.weight(
            &format!("{prefix}.bn.weight"),
            bn.ws.as_ref().expect("affine BatchNorm"),
        );
        let bias = self.weight(
            &format!("{prefix}.bn.bias"),
            bn.bs.as_ref().expect("affine BatchNorm"),
        );
        let mean = self.weight(&format!("{prefix}.bn.running_mean"), &bn.running_mean);
        let var = self.weight(&format!("{prefix}.bn.running_var"), &bn.running_var);
        self.node(
            "BatchNormalization",
            &[&conv, &scale, &bias, &mean, &var],
            vec![attr_float("epsilon", BN_EPS as f32)],
            None,
        )
    }

    fn block(&mut self, x: &str, block: &BasicBlock, prefix: &str) -> String {
        let h = self.conv_bn(x, &block.first, &format!("{prefix}.first"));
        let h = self.node("Relu", &[&h], vec![], None);
        let h = self.conv_bn(&h, &block.second, &format!("{prefix}.second"));
        let skip = match &block.shortcut {
            Some(s) => self.conv_bn(x, s, &format!("{prefix}.shortcut")),
            None => x.to_string(),
        };
        let sum = self.node("Add", &[&h, &skip], vec![], None);
        self.node("Relu", &[&sum], vec![], None)
    }

    fn linear(
        &mut self,
        x: &str,
        layer: &nn::Linear,
        prefix: &str,
        output: Option<&str>,
    ) -> String {
        let bias = layer.bs.as_ref().expect("linear layers have biases");
        self.gemm(x, &layer.ws, bias, prefix, output)
    }

    /// `x·Wᵀ + b` with `weight` `[out, in]`.
    fn gemm(
        &mut self,
        x: &str,
        weight: &Tensor,
        bias: &Tensor,
        prefix: &str,
        output: Option<&str>,
    ) -> String {
        let w = self.weight(&format!("{prefix}.weight"), weight);
        let b = self.weight(&format!("{prefix}.bias"), bias);
        self.node("Gemm", &[x, &w, &b], vec![attr_int("transB", 1)], output)
    }
}

/// The classifier (normalisation, encoder, projector when the head reads it,
/// head) in inference mode, as an ONNX model.
pub fn to_onnx(network: &Network, info: &ExportInfo) -> pb::ModelProto {
    let mut g = GraphBuilder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        counter: 0,
    };
    let c = info.image_shape[0];
    let norm = &network.normalization;
    let mean = g.weight(
        "normalize.mean",
        &Tensor::from_slice(&norm.mean).view([1, c, 1, 1]),
    );
    let std = g.weight(
        "normalize.std",
        &Tensor::from_slice(&norm.std).view([1, c, 1, 1]),
    );
    let centred = g.node("Sub", &["input", &mean], vec![], None);
    let x = g.node("Div", &[&centred, &std], vec![], None);
    let stem = g.conv_bn(&x, &network.encoder.stem, "encoder.stem");
    let mut h = g.node("Relu", &[&stem], vec![], None);
    for (i, block) in network.encoder.blocks.iter().enumerate() {
        h = g.block(&h, block, &format!("encoder.block{i}"));
    }
    let pooled = g.node("GlobalAveragePool", &[&h], vec![], None);
    let mut features = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)], None);
    if network.features == HeadFeatures::Projector {
        let hidden = g.linear(
            &features,
            &network.projector.hidden,
            "projector.hidden",
            None,
        );
        let hidden = g.node("Relu", &[&hidden], vec![], None);
        features = g.linear(&hidden, &network.projector.out, "projector.out", None);
    }
    match &network.standardization {
        // W·((h − shift)·scale) + b = (W·diag(scale))·h + (b − W·diag(scale)·shift)
        Some(s) => {
            let weight = &network.head.ws * s.scale.unsqueeze(0);
            let bias = network.head.bs.as_ref().expect("linear layers have biases")
                - weight.matmul(&s.shift);
            g.gemm(&features, &weight, &bias, "head", Some("logits"))
        }
        None => g.linear(&features, &network.head, "head", Some("logits")),
    };
    let classes = network.head.ws.size()[0];
    let [_, height, width] = info.image_shape;
    let graph = pb::GraphProto {
        name: "upat".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![tensor_value_info(
            "input",
            1,
            &[None, Some(c), Some(height), Some(width)],
        )],
        output: vec![tensor_value_info("logits", 1, &[None, Some(classes)])],
        ..Default::default()
    };
    let meta = |key: &str, value: String| pb::StringStringEntryProto {
        key: key.into(),
        value,
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "upat".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: vec![
            meta("upat.method", info.method.clone()),
            meta("upat.dataset", info.dataset.clone()),
            meta("upat.classes", classes.to_string()),
            meta("upat.train_config", info.train_config.clone()),
        ],
        ..Default::default()
    }
}
