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

/// Encoder, projector and head: everything a run trains or exports.
#[derive(Debug)]
pub struct Network {
    pub encoder: ResNet18,
    pub projector: Projector,
    pub head: nn::Linear,
    pub features: HeadFeatures,
    pub normalization: InputNormalization,
    /// Scale the head's input features to unit ℓ2 norm. Fine-tuning heads
    /// use it: contrastive training leaves feature norms free (NT-Xent only
    /// sees directions), and a linear head on features of norm ~10 diverges at
    /// the paper's learning rate of 0.5.
    pub unit_features: bool,
}

/// Added to the squared norm before the square root (kept in the export too).
pub const UNIT_FEATURES_EPS: f64 = 1e-12;

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
            unit_features: false,
        }
    }

    /// The same network with its head reading unit-norm features.
    pub fn with_unit_features(mut self, unit: bool) -> Self {
        self.unit_features = unit;
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

    /// Class logits of [0, 1] images.
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.features_t(xs, train);
        let h = match self.features {
            HeadFeatures::Projector => h.apply(&self.projector),
            HeadFeatures::Backbone => h,
        };
        let h = if self.unit_features {
            let norm = (h
                .square()
                .sum_dim_intlist([1i64].as_slice(), true, tch::Kind::Float)
                + UNIT_FEATURES_EPS)
                .sqrt();
            h / norm
        } else {
            h
        };
        h.apply(&self.head)
    }
}

impl ModuleT for Network {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.logits_t(xs, train)
    }
}
