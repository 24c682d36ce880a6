//! Labelled image datasets in memory, and the loaders for the file formats
//! users bring: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 binary, `.npz`.
//!
//! Every loader returns pixels as `f32` in `[0, 1]`, laid out NCHW, and
//! validates sizes before trusting them, so a truncated download fails with a
//! message naming the file and the size it should have.

mod cifar;
mod idx;
mod npz;

pub use cifar::{load_cifar, CifarVariant};
pub use idx::load_idx_pair;
pub use npz::{load_npz, read_npz_f32, save_npz};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where the Debian package `dataset-fashion-mnist` installs its files.
pub const FASHION_MNIST_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Which half of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Labelled images, NCHW `f32` in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name for reports, e.g. `fashion-mnist` or `npz:eval.npz`.
    pub name: String,
    /// `[channels, height, width]` of every image.
    pub image_shape: [usize; 3],
    /// `len() * C * H * W` pixels.
    pub pixels: Vec<f32>,
    /// One class index per image.
    pub labels: Vec<i64>,
    /// Number of classes the dataset defines (at least `max(labels) + 1`).
    pub num_classes: usize,
    /// Each sample's index in its source file: the id reports name it by and
    /// its random streams are keyed by, kept through `truncate` (and any
    /// later slicing) so a sample is the same sample however the data is cut.
    pub ids: Vec<u64>,
}

impl Dataset {
    /// Checks the invariants every loader promises; loaders call it last.
    pub fn new(
        name: impl Into<String>,
        image_shape: [usize; 3],
        pixels: Vec<f32>,
        labels: Vec<i64>,
        num_classes: usize,
        origin: &Path,
    ) -> Result<Self> {
        let per_image: usize = image_shape.iter().product();
        if per_image == 0 || pixels.len() != labels.len() * per_image {
            return Err(Error::data(
                origin,
                format!(
                    "{} pixels for {} labels of images {:?}: expected {}",
                    pixels.len(),
                    labels.len(),
                    image_shape,
                    labels.len() * per_image
                ),
            ));
        }
        if let Some(i) = pixels.iter().position(|p| !p.is_finite()) {
            return Err(Error::data(
                origin,
                format!(
                    "image {} has a non-finite pixel ({}); clean the data first",
                    i / per_image,
                    pixels[i]
                ),
            ));
        }
        if let Some(i) = pixels.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(Error::data(
                origin,
                format!(
                    "image {} has pixel value {} outside [0, 1]; float images must be scaled to [0, 1] \
                     (normalisation belongs in the model or in --normalize)",
                    i / per_image,
                    pixels[i]
                ),
            ));
        }
        if let Some((i, y)) = labels
            .iter()
            .enumerate()
            .find(|(_, &y)| y < 0 || y as usize >= num_classes)
        {
            return Err(Error::data(
                origin,
                format!("label {y} of sample {i} is outside 0..{num_classes}"),
            ));
        }
        let ids = (0..labels.len() as u64).collect();
        Ok(Dataset {
            name: name.into(),
            image_shape,
            pixels,
            labels,
            num_classes,
            ids,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (`C * H * W`).
    pub fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// The pixels of samples `start..end`, contiguous NCHW.
    pub fn pixels_of(&self, range: std::ops::Range<usize>) -> &[f32] {
        let n = self.image_len();
        &self.pixels[range.start * n..range.end * n]
    }

    /// Splits off the samples from `at` on (ids kept), leaving the first `at`.
    pub fn split_off(&mut self, at: usize) -> Dataset {
        let at = at.min(self.len());
        Dataset {
            name: self.name.clone(),
            image_shape: self.image_shape,
            pixels: self.pixels.split_off(at * self.image_len()),
            labels: self.labels.split_off(at),
            num_classes: self.num_classes,
            ids: self.ids.split_off(at),
        }
    }

    /// Keeps only the first `n` samples (no-op when `n >= len`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.pixels.truncate(n * self.image_len());
            self.labels.truncate(n);
            self.ids.truncate(n);
        }
    }
}

/// A dataset named on the command line: `KIND:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    FashionMnist(PathBuf),
    Mnist(PathBuf),
    Npz(PathBuf),
}

/// The `--data` forms, for help texts and messages (the one list).
pub const DATA_FORMS: &str =
    "cifar10:DIR, cifar100:DIR, fashion-mnist[:DIR], mnist:DIR or npz:FILE";

impl std::str::FromStr for DataSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let (kind, path) = spec.split_once(':').unwrap_or((spec, ""));
        let path = PathBuf::from(path);
        let need_path = |p: PathBuf| {
            if p.as_os_str().is_empty() {
                Err(Error::Usage(format!(
                    "--data {spec}: `{kind}` needs a path after the colon, e.g. {kind}:DIR"
                )))
            } else {
                Ok(p)
            }
        };
        match kind {
            "cifar10" => Ok(DataSpec::Cifar10(need_path(path)?)),
            "cifar100" => Ok(DataSpec::Cifar100(need_path(path)?)),
            "fashion-mnist" if path.as_os_str().is_empty() => Ok(DataSpec::FashionMnist(
                PathBuf::from(FASHION_MNIST_SYSTEM_DIR),
            )),
            "fashion-mnist" => Ok(DataSpec::FashionMnist(path)),
            "mnist" => Ok(DataSpec::Mnist(need_path(path)?)),
            "npz" => Ok(DataSpec::Npz(need_path(path)?)),
            _ => Err(Error::Usage(format!(
                "--data {spec}: unknown dataset kind `{kind}`; use {DATA_FORMS}"
            ))),
        }
    }
}

impl DataSpec {
    /// Loads the requested split.
    pub fn load(&self, split: Split) -> Result<Dataset> {
        match self {
            DataSpec::Cifar10(dir) => load_cifar(dir, CifarVariant::Cifar10, split),
            DataSpec::Cifar100(dir) => load_cifar(dir, CifarVariant::Cifar100, split),
            DataSpec::FashionMnist(dir) => idx::load_idx_dir(dir, "fashion-mnist", split),
            DataSpec::Mnist(dir) => idx::load_idx_dir(dir, "mnist", split),
            // An npz file holds one split: the user chose it by naming the file.
            DataSpec::Npz(file) => load_npz(file),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_spec_parses_every_kind() {
        assert_eq!(
            "cifar10:/d".parse::<DataSpec>().unwrap(),
            DataSpec::Cifar10("/d".into())
        );
        assert_eq!(
            "npz:x.npz".parse::<DataSpec>().unwrap(),
            DataSpec::Npz("x.npz".into())
        );
        assert_eq!(
            "fashion-mnist".parse::<DataSpec>().unwrap(),
            DataSpec::FashionMnist(FASHION_MNIST_SYSTEM_DIR.into())
        );
        assert!("imagenet:/d".parse::<DataSpec>().is_err());
        assert!("cifar10".parse::<DataSpec>().is_err());
    }

    #[test]
    fn dataset_rejects_bad_pixels_and_labels() {
        let p = Path::new("t");
        assert!(Dataset::new("t", [1, 1, 2], vec![0.0, f32::NAN], vec![0], 2, p).is_err());
        assert!(Dataset::new("t", [1, 1, 2], vec![0.0, 2.0], vec![0], 2, p).is_err());
        assert!(Dataset::new("t", [1, 1, 2], vec![0.0, 1.0], vec![2], 2, p).is_err());
        assert!(Dataset::new("t", [1, 1, 2], vec![0.0, 1.0, 0.5], vec![1], 2, p).is_err());
        let ok = Dataset::new("t", [1, 1, 2], vec![0.0, 1.0], vec![1], 2, p).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok.ids, [0]);
    }

    #[test]
    fn truncation_keeps_each_samples_file_index() {
        let p = Path::new("t");
        let mut d = Dataset::new("t", [1, 1, 1], vec![0.0, 0.5, 1.0], vec![0, 1, 0], 2, p).unwrap();
        assert_eq!(d.ids, [0, 1, 2]);
        d.truncate(2);
        assert_eq!(
            (d.ids.as_slice(), d.labels.as_slice()),
            (&[0u64, 1][..], &[0i64, 1][..])
        );
    }
}
