//! Loss heads: per-sample loss from the logits `z` `[N, K]` and the labels,
//! and its gradient with respect to `z`, written in closed form (no
//! differentiation of the head itself is needed). The embedding heads
//! (cosine, l2) read a reference embedding `[N, D]` instead of labels: the
//! label-free objectives of an encoder audit.

use super::emit::{attr_int, Emitter};
use super::{LABELS, REFERENCE, TARGETS};
use crate::error::{Error, Result};

/// The objective an attack maximises: the gradient graph's loss head.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Loss {
    /// Cross-entropy.
    Ce,
    /// Carlini–Wagner margin: max_{j≠y} z_j − z_y.
    Margin,
    /// Difference of logits ratio (Croce & Hein 2020).
    Dlr,
    /// Targeted DLR: needs a target class per sample.
    DlrTargeted,
    /// z_t − z_y: the targeted logit difference whose linearisation FAB-T
    /// projects onto. Needs a target class per sample.
    TargetMargin,
    /// 1 − cos(z, r): the cosine distance of an embedding to a reference
    /// embedding `r` (the clean one; UPAT's instance-wise objective). Norms
    /// below 1e-8 count as 1e-8, as in PyTorch's `cosine_similarity`.
    Cosine,
    /// ‖z − r‖₂: the Euclidean distance of an embedding to a reference.
    L2,
}

impl Loss {
    pub const ALL: [Loss; 5] = [
        Loss::Ce,
        Loss::Margin,
        Loss::Dlr,
        Loss::DlrTargeted,
        Loss::TargetMargin,
    ];

    /// The label-free losses of an embedding and a reference embedding.
    pub const EMBEDDING: [Loss; 2] = [Loss::Cosine, Loss::L2];

    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Ce => "ce",
            Loss::Margin => "margin",
            Loss::Dlr => "dlr",
            Loss::DlrTargeted => "dlr-targeted",
            Loss::TargetMargin => "target-margin",
            Loss::Cosine => "cosine",
            Loss::L2 => "l2",
        }
    }

    /// A classifier loss by name ([`Loss::ALL`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Whether the loss needs target classes (the graph's `targets` input).
    pub fn is_targeted(self) -> bool {
        matches!(self, Loss::DlrTargeted | Loss::TargetMargin)
    }

    /// Whether the loss compares an embedding with a reference embedding
    /// (the graph's `reference` input, in place of `labels`).
    pub fn is_embedding(self) -> bool {
        matches!(self, Loss::Cosine | Loss::L2)
    }

    /// The fewest classes (embedding losses: dimensions) the loss is
    /// defined for.
    pub fn min_classes(self) -> usize {
        match self {
            Loss::Ce | Loss::Cosine | Loss::L2 => 1,
            Loss::Margin | Loss::TargetMargin => 2,
            Loss::Dlr => 3,
            Loss::DlrTargeted => 4,
        }
    }
}

/// The emitted head: `loss` `[N]` and d(Σ loss)/dz `[N, K]`.
pub struct Head {
    pub loss: String,
    pub logits_grad: String,
}

/// Float one-hot rows `[N, K]` of class indices `index` `[N, 1]`.
fn one_hot(emit: &mut Emitter, class_ids: &str, index: &str) -> String {
    let equal = emit.binary("Equal", class_ids, index);
    emit.op("Cast", &[&equal], vec![attr_int("to", 1)])
}

/// `z[n, index[n]]` as `[N, 1]`, via a one-hot product.
fn pick(emit: &mut Emitter, z: &str, hot: &str) -> String {
    let product = emit.binary("Mul", z, hot);
    emit.reduce_sum(&product, &[1], true)
}

pub fn emit_head(emit: &mut Emitter, z: &str, classes: usize, loss: Loss) -> Result<Head> {
    if loss.is_embedding() {
        return Ok(embedding_head(emit, z, loss));
    }
    let class_ids = emit.const_i64(
        &[1, classes as i64],
        &(0..classes as i64).collect::<Vec<_>>(),
    );
    let labels = emit.unsqueeze(LABELS, &[1]);
    let hot_y = one_hot(emit, &class_ids, &labels);
    if classes < loss.min_classes() {
        return Err(Error::Usage(format!(
            "the {} loss needs at least {} classes; the model has {classes}",
            loss.as_str(),
            loss.min_classes()
        )));
    }
    let (loss_keep, logits_grad) = match loss {
        // CE: loss = −log softmax(z)_y; gradient softmax(z) − onehot(y).
        Loss::Ce => {
            let log_probs = emit.op("LogSoftmax", &[z], vec![attr_int("axis", 1)]);
            let picked = pick(emit, &log_probs, &hot_y);
            let loss = emit.unary("Neg", &picked);
            // exp(log-softmax) rather than Softmax: tract's Softmax kernel uses a
            // fast exp whose ~1e-3 error would show in the gradient.
            let probs = emit.unary("Exp", &log_probs);
            (loss, emit.binary("Sub", &probs, &hot_y))
        }
        // CW margin: loss = max_{j≠y} z_j − z_y; gradient onehot(j*) − onehot(y).
        Loss::Margin => {
            let (max_other, hot_other) = max_other(emit, z, &hot_y, &class_ids);
            let z_y = pick(emit, z, &hot_y);
            (
                emit.binary("Sub", &max_other, &z_y),
                emit.binary("Sub", &hot_other, &hot_y),
            )
        }
        // DLR (Croce & Hein 2020): loss = −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e−12).
        Loss::Dlr => {
            let (max_other, hot_other) = max_other(emit, z, &hot_y, &class_ids);
            let z_y = pick(emit, z, &hot_y);
            let numerator = emit.binary("Sub", &z_y, &max_other);
            let d_numerator = emit.binary("Sub", &hot_y, &hot_other);
            let (denominator, d_denominator) = sorted_spread(emit, z, &class_ids, 3, false);
            quotient_head(emit, &numerator, &d_numerator, &denominator, &d_denominator)
        }
        // FAB-T's target margin: loss = z_t − z_y; gradient onehot(t) − onehot(y).
        Loss::TargetMargin => target_margin(emit, z, &hot_y, &class_ids),
        Loss::Cosine | Loss::L2 => unreachable!("embedding heads are emitted above"),
        // Targeted DLR: loss = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12).
        Loss::DlrTargeted => {
            let targets = emit.unsqueeze(TARGETS, &[1]);
            let hot_t = one_hot(emit, &class_ids, &targets);
            let z_y = pick(emit, z, &hot_y);
            let z_t = pick(emit, z, &hot_t);
            let numerator = emit.binary("Sub", &z_y, &z_t);
            let d_numerator = emit.binary("Sub", &hot_y, &hot_t);
            let (denominator, d_denominator) = sorted_spread(emit, z, &class_ids, 4, true);
            quotient_head(emit, &numerator, &d_numerator, &denominator, &d_denominator)
        }
    };
    let loss = emit.squeeze(&loss_keep, &[1]);
    Ok(Head { loss, logits_grad })
}

/// The embedding heads, on `z` and the `reference` input `r`, both `[N, D]`.
fn embedding_head(emit: &mut Emitter, z: &str, loss: Loss) -> Head {
    let row_sum = |emit: &mut Emitter, a: &str, b: &str| {
        let product = emit.binary("Mul", a, b);
        emit.reduce_sum(&product, &[1], true)
    };
    let (loss_keep, logits_grad) = match loss {
        // 1 − cos with cos = z·r / (|z|ε |r|ε), |v|ε = max(|v|, 1e−8);
        // gradient −(r / (|z|ε |r|ε) − cos · z / |z|ε²).
        Loss::Cosine => {
            let floor = emit.scalar_f32(1e-8);
            let z_r = row_sum(emit, z, REFERENCE);
            let z_z = row_sum(emit, z, z);
            let r_r = row_sum(emit, REFERENCE, REFERENCE);
            let z_norm = emit.unary("Sqrt", &z_z);
            let z_norm = emit.binary("Max", &z_norm, &floor);
            let r_norm = emit.unary("Sqrt", &r_r);
            let r_norm = emit.binary("Max", &r_norm, &floor);
            let norms = emit.binary("Mul", &z_norm, &r_norm);
            let cos = emit.binary("Div", &z_r, &norms);
            let one = emit.scalar_f32(1.0);
            let loss = emit.binary("Sub", &one, &cos);
            let towards_r = emit.binary("Div", REFERENCE, &norms);
            let z_norm_sq = emit.binary("Mul", &z_norm, &z_norm);
            let cos_over = emit.binary("Div", &cos, &z_norm_sq);
            let along_z = emit.binary("Mul", &cos_over, z);
            (loss, emit.binary("Sub", &along_z, &towards_r))
        }
        // ‖z − r‖₂; gradient (z − r) / ‖z − r‖₂, 0 where z = r (the
        // distance's subgradient there; an attack starts from noise).
        Loss::L2 => {
            let diff = emit.binary("Sub", z, REFERENCE);
            let squared = row_sum(emit, &diff, &diff);
            let distance = emit.unary("Sqrt", &squared);
            let floor = emit.scalar_f32(f32::MIN_POSITIVE);
            let divisor = emit.binary("Max", &distance, &floor);
            (distance, emit.binary("Div", &diff, &divisor))
        }
        _ => unreachable!("only embedding losses have embedding heads"),
    };
    let loss = emit.squeeze(&loss_keep, &[1]);
    Head { loss, logits_grad }
}

/// The target margin z_t − z_y `[N, 1]` and its gradient onehot(t) − onehot(y).
fn target_margin(emit: &mut Emitter, z: &str, hot_y: &str, class_ids: &str) -> (String, String) {
    let targets = emit.unsqueeze(TARGETS, &[1]);
    let hot_t = one_hot(emit, class_ids, &targets);
    let z_y = pick(emit, z, hot_y);
    let z_t = pick(emit, z, &hot_t);
    (
        emit.binary("Sub", &z_t, &z_y),
        emit.binary("Sub", &hot_t, hot_y),
    )
}

/// `max_{j≠y} z_j` `[N, 1]` and the one-hot of its argmax.
fn max_other(emit: &mut Emitter, z: &str, hot_y: &str, class_ids: &str) -> (String, String) {
    let is_label = emit.op("Cast", &[hot_y], vec![attr_int("to", 9)]);
    let lowest = emit.scalar_f32(f32::MIN);
    let others = emit.op("Where", &[&is_label, &lowest, z], vec![]);
    let max = emit.reduce_max(&others, &[1], true);
    let argmax = emit.op(
        "ArgMax",
        &[&others],
        vec![attr_int("axis", 1), attr_int("keepdims", 1)],
    );
    (max, one_hot(emit, class_ids, &argmax))
}

/// The DLR denominator from the top-`k` logits and its derivative w.r.t. z:
/// `z_π1 − z_π3 + 1e−12` (k = 3), or `z_π1 − (z_π3 + z_π4)/2 + 1e−12` (k = 4, `targeted`).
fn sorted_spread(
    emit: &mut Emitter,
    z: &str,
    class_ids: &str,
    k: i64,
    targeted: bool,
) -> (String, String) {
    let k_input = emit.ints(&[k]);
    let top = emit.op_n(
        "TopK",
        &[z, &k_input],
        vec![
            attr_int("axis", 1),
            attr_int("largest", 1),
            attr_int("sorted", 1),
        ],
        2,
    );
    let (values, indices) = (&top[0], &top[1]);
    let column = |emit: &mut Emitter, tensor: &str, j: i64| {
        let (start, end, axis) = (emit.ints(&[j]), emit.ints(&[j + 1]), emit.ints(&[1]));
        emit.op("Slice", &[tensor, &start, &end, &axis], vec![])
    };
    let first = column(emit, values, 0);
    let hot_first = {
        let index = column(emit, indices, 0);
        one_hot(emit, class_ids, &index)
    };
    let (low, hot_low) = if targeted {
        let (third, fourth) = (column(emit, values, 2), column(emit, values, 3));
        let (i3, i4) = (column(emit, indices, 2), column(emit, indices, 3));
        let (h3, h4) = (one_hot(emit, class_ids, &i3), one_hot(emit, class_ids, &i4));
        let half = emit.scalar_f32(0.5);
        let sum = emit.binary("Add", &third, &fourth);
        let hot_sum = emit.binary("Add", &h3, &h4);
        (
            emit.binary("Mul", &sum, &half),
            emit.binary("Mul", &hot_sum, &half),
        )
    } else {
        let third = column(emit, values, 2);
        let index = column(emit, indices, 2);
        (third, one_hot(emit, class_ids, &index))
    };
    let spread = emit.binary("Sub", &first, &low);
    let tiny = emit.scalar_f32(1e-12);
    (
        emit.binary("Add", &spread, &tiny),
        emit.binary("Sub", &hot_first, &hot_low),
    )
}

/// loss = −u/d; d loss/dz = −(du/dz)/d + u/d² · dd/dz.
fn quotient_head(emit: &mut Emitter, u: &str, du: &str, d: &str, dd: &str) -> (String, String) {
    let ratio = emit.binary("Div", u, d);
    let loss = emit.unary("Neg", &ratio);
    let first = emit.binary("Div", du, d);
    let ratio_over_d = emit.binary("Div", &ratio, d);
    let second = emit.binary("Mul", &ratio_over_d, dd);
    (loss, emit.binary("Sub", &second, &first))
}
