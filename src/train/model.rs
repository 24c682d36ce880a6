//! ResNet-18 with the CIFAR stem (3×3 convolution, no max-pool), channel
//! widths scaled by `width` (64 is the paper's; 16 makes CPU runs practical),
//! any number of input channels; the SimCLR projector g (Linear–ReLU–Linear to
//! 128) and a linear classification head f_l (paper §3.3).
//!
//! Layers are kept as named fields rather than a `Sequential` so that the
//! ONNX exporter can walk them.

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Output size of the projector (paper §4.1).
pub const PROJECTION_DIM: i64 = 128;
/// BatchNorm epsilon (tch's default), needed again at export.
pub const BN_EPS: f64 = 1e-5;

/// A convolution without bias, and its geometry (tch keeps the config private).
#[derive(Debug)]
pub struct ConvLayer {
    pub conv: nn::Conv2D,
    pub stride: i64,
    pub padding: i64,
}

impl ConvLayer {
    fn new(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        let config = nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        };
        ConvLayer {
            conv: nn::conv2d(p, c_in, c_out, kernel, config),
            stride,
            padding,
        }
    }
}

/// Convolution then batch normalisation.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: ConvLayer,
    pub bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> Self {
        ConvBn {
            conv: ConvLayer::new(p / "conv", c_in, c_out, kernel, stride, kernel / 2),
            bn: nn::batch_norm2d(p / "bn", c_out, Default::default()),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv.conv).apply_t(&self.bn, train)
    }
}

/// The basic residual block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).
#[derive(Debug)]
pub struct BasicBlock {
    pub first: ConvBn,
    pub second: ConvBn,
    /// 1×1 projection when the shape changes.
    pub shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| ConvBn::new(&(p / "shortcut"), c_in, c_out, 1, stride));
        BasicBlock {
            first: ConvBn::new(&(p / "first"), c_in, c_out, 3, stride),
            second: ConvBn::new(&(p / "second"), c_out, c_out, 3, 1),
            shortcut,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let main = self
            .second
            .forward_t(&self.first.forward_t(xs, train).relu(), train);
        let skip = match &self.shortcut {
            Some(s) => s.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        (main + skip).relu()
    }
}

/// The encoder f_θ: stem, four stages of two blocks, global average pooling.
#[derive(Debug)]
pub struct ResNet18 {
    pub stem: ConvBn,
    pub blocks: Vec<BasicBlock>,
    /// Size of the pooled features (8·width).
    pub feature_dim: i64,
}

impl ResNet18 {
    pub fn new(p: &nn::Path, in_channels: i64, width: i64) -> Self {
        let stem = ConvBn::new(&(p / "stem"), in_channels, width, 3, 1);
        let mut blocks = Vec::new();
        let mut c_in = width;
        for (stage, (multiplier, stride)) in
            [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate()
        {
            let c_out = width * multiplier;
            for b in 0..2 {
                let path = p / format!("layer{}", stage + 1) / b;
                blocks.push(BasicBlock::new(
                    &path,
                    c_in,
                    c_out,
                    if b == 0 { stride } else { 1 },
                ));
                c_in = c_out;
            }
        }
        ResNet18 {
            stem,
            blocks,
            feature_dim: c_in,
        }
    }

    /// Features `[N, 8·width]` of images `[N, C, H, W]` (already normalised).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem.forward_t(xs, train).relu();
        for block in &self.blocks {
            h = block.forward_t(&h, train);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// The projector g: Linear–ReLU–Linear to 128 dimensions.
#[derive(Debug)]
pub struct Projector {
    pub hidden: nn::Linear,
    pub out: nn::Linear,
}

impl Projector {
    pub fn new(p: &nn::Path, in_dim: i64) -> Self {
        Projector {
            hidden: nn::linear(p / "hidden", in_dim, in_dim, Default::default()),
            out: nn::linear(p / "out", in_dim, PROJECTION_DIM, Default::default()),
        }
    }
}

impl Module for Projector {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.apply(&self.hidden).relu().apply(&self.out)
    }
}

/// Which features the linear head reads.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum HeadFeatures {
    /// g(f_θ(x)), the paper's choice (§3.3).
    Projector,
    /// f_θ(x).
    Backbone,
}

/// Per-channel normalisation applied inside the model, so inputs are [0, 1] pixels.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputNormalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// A fixed affine map of the head's input, `(h − shift) · scale`, fitted
/// once on the frozen encoder's features of the training data (fine-tuning
/// runs). Contrastive features share a large common direction and have free
/// norms: a linear head on them either diverges at the paper's learning rate
/// (raw features, norm ~10) or learns very slowly (unit-norm features, whose
/// class differences are a small part of each vector). Centred features
/// scaled to unit variance per dimension and ~unit norm overall train stably
/// and quickly. Being affine, the map folds into the head at export.
#[derive(Debug)]
pub struct FeatureStandardization {
    pub shift: Tensor,
    pub scale: Tensor,
}

/// Encoder, projector and head: everything a run trains or exports.
#[derive(Debug)]
pub struct Network {
    pub encoder: ResNet18,
    pub projector: Projector,
    pub head: nn::Linear,
    pub features: HeadFeatures,
    pub normalization: InputNormalization,
    /// Standardisation of the head's input (fine-tuning runs); saved with
    /// the weights as the non-trainable `head_input.shift` and `.scale`.
    pub standardization: Option<FeatureStandardization>,
}

impl Network {
    pub fn new(
        p: &nn::Path,
        in_channels: i64,
        width: i64,
        classes: i64,
        features: HeadFeatures,
        normalization: InputNormalization,
    ) -> Self {
        let encoder = ResNet18::new(&(p / "encoder"), in_channels, width);
        let projector = Projector::new(&(p / "projector"), encoder.feature_dim);
        let head_in = match features {
            HeadFeatures::Projector => PROJECTION_DIM,
            HeadFeatures::Backbone => encoder.feature_dim,
        };
        let head = nn::linear(p / "head", head_in, classes, Default::default());
        Network {
            encoder,
            projector,
            head,
            features,
            normalization,
            standardization: None,
        }
    }

    /// The same network with its head reading standardised features (the
    /// identity map until [`Network::fit_standardization`]).
    pub fn with_standardized_features(mut self, p: &nn::Path, on: bool) -> Self {
        if on {
            let dim = self.head.ws.size()[1];
            let q = p / "head_input";
            self.standardization = Some(FeatureStandardization {
                shift: q.zeros_no_train("shift", &[dim]),
                scale: q.ones_no_train("scale", &[dim]),
            });
        }
        self
    }

    fn normalize(&self, xs: &Tensor) -> Tensor {
        let c = self.normalization.mean.len() as i64;
        let mean = Tensor::from_slice(&self.normalization.mean)
            .view([1, c, 1, 1])
            .to_device(xs.device());
        let std = Tensor::from_slice(&self.normalization.std)
            .view([1, c, 1, 1])
            .to_device(xs.device());
        (xs - mean) / std
    }

    /// Encoder features of [0, 1] images.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.encoder.forward_t(&self.normalize(xs), train)
    }

    /// Projection z = g(f_θ(x)) used by the contrastive losses.
    pub fn project_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train).apply(&self.projector)
    }

    /// The features the head reads, before standardisation.
    pub fn head_features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.features_t(xs, train);
        match self.features {
            HeadFeatures::Projector => h.apply(&self.projector),
            HeadFeatures::Backbone => h,
        }
    }

    /// Sets the standardisation from the head features `h` `[N, D]` of the
    /// training data: per-dimension mean and standard deviation, scaled by
    /// 1/√D so the standardised vectors have about unit norm. Dimensions that
    /// barely vary (dead units) get the scale of a tenth of the mean spread
    /// rather than an enormous one.
    pub fn fit_standardization(&self, h: &Tensor) {
        let Some(s) = &self.standardization else {
            return;
        };
        tch::no_grad(|| {
            let mean = h.mean_dim([0i64].as_slice(), false, tch::Kind::Float);
            let std = h.std_dim([0i64].as_slice(), false, false);
            let floor = std.mean(tch::Kind::Float).double_value(&[]).max(1e-12) * 0.1;
            let dim = h.size()[1] as f64;
            let scale = (std.clamp_min(floor) * dim.sqrt()).reciprocal();
            s.shift.shallow_clone().copy_(&mean);
            s.scale.shallow_clone().copy_(&scale);
        });
    }

    /// Class logits of [0, 1] images.
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.head_features_t(xs, train);
        let h = match &self.standardization {
            Some(s) => (h - &s.shift) * &s.scale,
            None => h,
        };
        h.apply(&self.head)
    }
}

impl ModuleT for Network {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.logits_t(xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn fitted_standardization_centres_features_to_about_unit_norm() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = InputNormalization {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let net = Network::new(&vs.root(), 1, 2, 3, HeadFeatures::Backbone, norm)
            .with_standardized_features(&vs.root(), true);
        // Features with a large common offset and unequal spreads.
        let h = Tensor::randn([400, 16], (Kind::Float, Device::Cpu))
            * Tensor::linspace(0.5, 5.0, 16, (Kind::Float, Device::Cpu))
            + 10.0;
        net.fit_standardization(&h);
        let s = net.standardization.as_ref().unwrap();
        let z = (&h - &s.shift) * &s.scale;
        let mean = z
            .mean_dim([0i64].as_slice(), false, Kind::Float)
            .abs()
            .max();
        assert!(mean.double_value(&[]) < 1e-4, "{mean}");
        let norm = z
            .square()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .mean(Kind::Float);
        assert!((norm.double_value(&[]) - 1.0).abs() < 0.05, "{norm}");
        // The variables the checkpoint carries are the fitted ones.
        assert!(
            vs.variables()["head_input.shift"]
                .mean(Kind::Float)
                .double_value(&[])
                > 9.0
        );
    }
}
