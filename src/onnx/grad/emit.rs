//! Writing new nodes and constants into a graph: the vocabulary the gradient
//! rules are written in. Every emitted op is a standard ONNX op valid at
//! opset 17 and later.

use crate::onnx::pb;
use std::collections::{HashMap, HashSet};

const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// Appends nodes and initializers with fresh, collision-free names.
pub struct Emitter {
    pub nodes: Vec<pb::NodeProto>,
    pub initializers: Vec<pb::TensorProto>,
    /// Default-domain opset the emitted graph declares.
    pub opset: i64,
    /// MaxPool backwards ONNX Runtime can run faster (`specialise/`).
    pub pool_sites: Vec<super::specialise::PoolSite>,
    /// ReLU backwards ONNX Runtime can run as one kernel (`specialise/`).
    pub relu_sites: Vec<super::specialise::ReluSite>,
    taken: HashSet<String>,
    counter: usize,
    shape_cache: HashMap<String, String>,
}

/// An attribute for [`Emitter::op`].
pub fn attr_int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

pub fn attr_string(name: &str, value: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn attr_tensor(name: &str, value: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(value),
        ..Default::default()
    }
}

pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: INT64,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

impl Emitter {
    /// `graph` supplies the names already in use.
    pub fn new(graph: &pb::GraphProto, opset: i64) -> Self {
        let mut taken = HashSet::new();
        for node in &graph.node {
            taken.extend(node.output.iter().cloned());
            taken.insert(node.name.clone());
        }
        taken.extend(graph.initializer.iter().map(|t| t.name.clone()));
        taken.extend(graph.input.iter().map(|t| t.name.clone()));
        Emitter {
            nodes: Vec::new(),
            initializers: Vec::new(),
            pool_sites: Vec::new(),
            relu_sites: Vec::new(),
            opset,
            taken,
            counter: 0,
            shape_cache: HashMap::new(),
        }
    }

    /// A name no tensor or node of the graph uses.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("upat_grad/{hint}_{}", self.counter);
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Emits a node with `outputs` outputs; returns their names.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<pb::AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let hint = op_type.to_lowercase();
        let output: Vec<String> = (0..outputs).map(|_| self.fresh(&hint)).collect();
        let name = self.fresh(&format!("{hint}_node"));
        self.nodes.push(pb::NodeProto {
            op_type: op_type.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    /// Emits a single-output node; returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<pb::AttributeProto>,
    ) -> String {
        self.op_n(op_type, inputs, attributes, 1)
            .pop()
            .expect("one output")
    }

    pub fn const_f32(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("const");
        self.initializers.push(float_tensor(&name, dims, values));
        name
    }

    pub fn scalar_f32(&mut self, value: f32) -> String {
        self.const_f32(&[], &[value])
    }

    pub fn const_i64(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh("const");
        self.initializers.push(int64_tensor(&name, dims, values));
        name
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, values: &[i64]) -> String {
        self.const_i64(&[values.len() as i64], values)
    }

    /// `Shape(x)`, emitted once per tensor.
    pub fn shape_of(&mut self, x: &str) -> String {
        if let Some(s) = self.shape_cache.get(x) {
            return s.clone();
        }
        let s = self.op("Shape", &[x], vec![]);
        self.shape_cache.insert(x.to_string(), s.clone());
        s
    }

    /// Float zeros of `x`'s shape.
    pub fn zeros_like(&mut self, x: &str) -> String {
        let shape = self.shape_of(x);
        self.op(
            "ConstantOfShape",
            &[&shape],
            vec![attr_tensor("value", float_tensor("", &[1], &[0.0]))],
        )
    }

    /// `Reshape(g, Shape(like))`.
    pub fn reshape_like(&mut self, g: &str, like: &str) -> String {
        let shape = self.shape_of(like);
        self.op("Reshape", &[g, &shape], vec![])
    }

    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let axes = self.ints(axes);
        self.op(
            "ReduceSum",
            &[x, &axes],
            vec![attr_int("keepdims", i64::from(keepdims))],
        )
    }

    /// ReduceMax takes its axes as an attribute before opset 18, as an input from 18.
    pub fn reduce_max(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = attr_int("keepdims", i64::from(keepdims));
        if self.opset >= 18 {
            let axes = self.ints(axes);
            self.op("ReduceMax", &[x, &axes], vec![keep])
        } else {
            self.op("ReduceMax", &[x], vec![attr_ints("axes", axes), keep])
        }
    }

    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.ints(axes);
        self.op("Unsqueeze", &[x, &axes], vec![])
    }

    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.ints(axes);
        self.op("Squeeze", &[x, &axes], vec![])
    }

    pub fn binary(&mut self, op_type: &str, a: &str, b: &str) -> String {
        self.op(op_type, &[a, b], vec![])
    }

    pub fn unary(&mut self, op_type: &str, a: &str) -> String {
        self.op(op_type, &[a], vec![])
    }

    /// The element-wise sum of several gradient contributions.
    pub fn sum(&mut self, terms: &[String]) -> String {
        match terms {
            [only] => only.clone(),
            _ => {
                let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
                self.op("Sum", &refs, vec![])
            }
        }
    }

    /// `Where(mask, g, 0)`.
    pub fn mask(&mut self, mask: &str, g: &str) -> String {
        let zero = self.scalar_f32(0.0);
        self.op("Where", &[mask, g, &zero], vec![])
    }
}
