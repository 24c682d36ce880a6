//! SimCLR's augmentations (Chen et al. 2020), batched on the training device:
//! random resized crop with horizontal flip, colour jitter, random grey and
//! Gaussian blur, each sample with its own random parameters. Colour
//! operations are skipped for single-channel images.

use tch::{Device, Kind, Tensor};

/// Augmentation strengths; the defaults are SimCLR's CIFAR settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augmentations {
    /// Crop area as a fraction of the image, drawn uniformly from this range.
    pub crop_scale: (f64, f64),
    /// Crop aspect ratio (width/height), drawn log-uniformly from this range.
    pub crop_ratio: (f64, f64),
    pub flip_probability: f64,
    pub jitter_probability: f64,
    /// Brightness, contrast, saturation strength; hue strength (fraction of a turn).
    pub jitter: (f64, f64),
    pub grey_probability: f64,
    pub blur_probability: f64,
    /// Gaussian σ range, in pixels.
    pub blur_sigma: (f64, f64),
}

impl Default for Augmentations {
    fn default() -> Self {
        Augmentations {
            crop_scale: (0.2, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_probability: 0.5,
            jitter_probability: 0.8,
            jitter: (0.4, 0.1),
            grey_probability: 0.2,
            blur_probability: 0.5,
            blur_sigma: (0.1, 2.0),
        }
    }
}

/// Uniform `[n]` values in `[low, high)`.
fn uniform(n: i64, low: f64, high: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device)) * (high - low) + low
}

/// `[n]` booleans true with probability `p`, as 0/1 floats shaped to broadcast over NCHW.
fn coin(n: i64, p: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device))
        .lt(p)
        .to_kind(Kind::Float)
        .view([n, 1, 1, 1])
}

impl Augmentations {
    /// One random view of each image of `x` `[N, C, H, W]` in [0, 1].
    pub fn view(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let channels = x.size()[1];
        let mut v = self.crop_and_flip(x);
        if channels == 3 {
            let jittered = self.jitter(&v);
            v = blend(&coin(n, self.jitter_probability, x.device()), &jittered, &v);
            let grey = grey(&v).expand_as(&v);
            v = blend(&coin(n, self.grey_probability, x.device()), &grey, &v);
        }
        let blurred = self.blur(&v);
        blend(&coin(n, self.blur_probability, x.device()), &blurred, &v).clamp(0.0, 1.0)
    }

    /// Random resized crop (area fraction from `crop_scale`, aspect ratio from
    /// `crop_ratio`) resampled to the full size, mirrored with `flip_probability`.
    fn crop_and_flip(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (n, device) = (size[0], x.device());
        let area = uniform(n, self.crop_scale.0, self.crop_scale.1, device);
        let log_ratio = uniform(n, self.crop_ratio.0.ln(), self.crop_ratio.1.ln(), device);
        let ratio = log_ratio.exp();
        // Width and height as fractions of the image, at most the whole image.
        let w = (&area * &ratio).sqrt().clamp_max(1.0);
        let h = (&area / &ratio).sqrt().clamp_max(1.0);
        // Centres where the crop fits, in affine_grid's [-1, 1] coordinates.
        let cx = (Tensor::rand([n], (Kind::Float, device)) * 2.0 - 1.0) * (1.0 - &w);
        let cy = (Tensor::rand([n], (Kind::Float, device)) * 2.0 - 1.0) * (1.0 - &h);
        let flip = Tensor::rand([n], (Kind::Float, device))
            .lt(self.flip_probability)
            .to_kind(Kind::Float)
            * -2.0
            + 1.0;
        let zeros = Tensor::zeros([n], (Kind::Float, device));
        let theta = Tensor::stack(&[&w * &flip, zeros.shallow_clone(), cx, zeros, h, cy], 1)
            .view([n, 2, 3]);
        let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
        // Bilinear, border padding (the crop lies inside the image anyway).
        x.grid_sampler(&grid, 0, 1, false)
    }

    /// Brightness, contrast, saturation and hue, each with its own random factor.
    fn jitter(&self, x: &Tensor) -> Tensor {
        let (n, device) = (x.size()[0], x.device());
        let (strength, hue) = self.jitter;
        let factor = |device| uniform(n, 1.0 - strength, 1.0 + strength, device).view([n, 1, 1, 1]);
        let v = (x * factor(device)).clamp(0.0, 1.0);
        let mean = grey(&v).mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        let v = blend(&factor(device), &v, &mean).clamp(0.0, 1.0);
        let v = blend(&factor(device), &v, &grey(&v)).clamp(0.0, 1.0);
        rotate_hue(
            &v,
            &(uniform(n, -hue, hue, device) * (2.0 * std::f64::consts::PI)),
        )
    }

    /// Gaussian blur with σ drawn per sample; kernel about a tenth of the image.
    fn blur(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let device = x.device();
        let radius = ((h.min(w) as f64 * 0.1) / 2.0).round().max(1.0) as i64;
        let sigma = uniform(n, self.blur_sigma.0, self.blur_sigma.1, device).view([n, 1]);
        let offsets = Tensor::arange_start(-radius, radius + 1, (Kind::Float, device))
            .view([1, 2 * radius + 1]);
        let squared: Tensor = &offsets * &offsets;
        let spread: Tensor = &sigma * &sigma * 2.0;
        let kernel = (-(squared / spread)).exp();
        let kernel = &kernel / kernel.sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        // One kernel per (sample, channel): a grouped, separable convolution.
        let kernel = kernel
            .unsqueeze(1)
            .expand([n, c, 2 * radius + 1], false)
            .reshape([n * c, 1, 1, 2 * radius + 1]);
        let planes = x.reshape([1, n * c, h, w]);
        let padded = planes.reflection_pad2d([radius, radius, 0, 0]);
        let horizontal = padded.conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], n * c);
        let padded = horizontal.reflection_pad2d([0, 0, radius, radius]);
        let vertical = padded.conv2d(
            &kernel.transpose(2, 3),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            n * c,
        );
        vertical.reshape([n, c, h, w])
    }
}

/// `b + mask·(a − b)`: `a` where the mask is 1, `b` where it is 0, and the
/// linear mix between (contrast and saturation factors extrapolate past 1).
fn blend(mask: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    b + mask * (a - b)
}

/// Luma (ITU-R 601) `[N, 1, H, W]` of RGB images.
fn grey(x: &Tensor) -> Tensor {
    let weights = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
        .view([1, 3, 1, 1])
        .to_device(x.device());
    (x * weights).sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
}

/// Rotates the chroma of RGB images by `angle` radians (per sample) in YIQ space.
fn rotate_hue(x: &Tensor, angle: &Tensor) -> Tensor {
    let device = x.device();
    let to_yiq = Tensor::from_slice(&[
        0.299f32, 0.587, 0.114, 0.596, -0.274, -0.322, 0.211, -0.523, 0.312,
    ])
    .view([3, 3])
    .to_device(device);
    let from_yiq = to_yiq.inverse();
    let n = x.size()[0];
    let (cos, sin) = (angle.cos(), angle.sin());
    let one = Tensor::ones([n], (Kind::Float, device));
    let zero = Tensor::zeros([n], (Kind::Float, device));
    let rotation = Tensor::stack(
        &[&one, &zero, &zero, &zero, &cos, &(-&sin), &zero, &sin, &cos],
        1,
    )
    .view([n, 3, 3]);
    let transform = from_yiq.matmul(&rotation).matmul(&to_yiq);
    let size = x.size();
    let flat = x.reshape([n, 3, -1]);
    transform
        .bmm(&flat)
        .reshape(size.as_slice())
        .clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_shape_and_range_and_differ() {
        tch::manual_seed(0);
        for channels in [1, 3] {
            let x = Tensor::rand([6, channels, 16, 16], (Kind::Float, Device::Cpu));
            let augment = Augmentations::default();
            let a = augment.view(&x);
            let b = augment.view(&x);
            assert_eq!(a.size(), x.size());
            assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 1.0);
            assert!(a.isfinite().all().int64_value(&[]) == 1);
            assert!(
                (&a - &b).abs().max().double_value(&[]) > 1e-3,
                "two views of the same images should differ"
            );
        }
    }

    #[test]
    fn the_identity_settings_change_nothing() {
        let x = Tensor::rand([4, 3, 8, 8], (Kind::Float, Device::Cpu));
        let none = Augmentations {
            crop_scale: (1.0, 1.0),
            crop_ratio: (1.0, 1.0),
            flip_probability: 0.0,
            jitter_probability: 0.0,
            jitter: (0.0, 0.0),
            grey_probability: 0.0,
            blur_probability: 0.0,
            blur_sigma: (0.1, 0.1),
        };
        let v = none.view(&x);
        assert!((&v - &x).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn grey_and_hue_rotation_preserve_luma() {
        let x = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 0.5 + 0.25;
        let rotated = rotate_hue(&x, &Tensor::from_slice(&[0.3f32, -0.2]));
        let diff = (grey(&rotated) - grey(&x)).abs().max().double_value(&[]);
        assert!(diff < 1e-2, "{diff}");
    }
}
