//! Labelled image datasets, and the loaders for the file formats users
//! bring: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 binary, `.npz` (held in
//! memory), and image collections (JPEG/PNG folders and lists, decoded per
//! batch: `images`).
//!
//! Every loader gives pixels as `f32` in `[0, 1]`, laid out NCHW, and
//! validates sizes before trusting them, so a truncated download fails with a
//! message naming the file and the size it should have.

mod cifar;
mod idx;
pub mod images;
mod npz;

pub use cifar::{load_cifar, CifarVariant};
pub use idx::load_idx_pair;
pub use npz::{load_npz, read_npz_f32, save_npz};

use crate::error::{Error, Result};
use images::{BadImage, ImageFiles, ImageOptions};
use std::borrow::Cow;
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

/// Where a dataset's pixels are.
#[derive(Debug, Clone)]
enum Pixels {
    /// `len() * C * H * W` floats.
    Memory(Vec<f32>),
    /// Image files, decoded when asked for.
    Files(ImageFiles),
}

/// Labelled images, NCHW `f32` in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name for reports, e.g. `fashion-mnist` or `npz:eval.npz`.
    pub name: String,
    /// `[channels, height, width]` of every image.
    pub image_shape: [usize; 3],
    pixels: Pixels,
    /// One class index per image.
    pub labels: Vec<i64>,
    /// Number of classes the dataset defines (at least `max(labels) + 1`).
    pub num_classes: usize,
    /// Whether `num_classes` only counts the classes the labels show,
    /// because the data does not say how many it has (npz; image
    /// collections without `--classes`): a model may have more.
    pub classes_from_labels: bool,
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
            pixels: Pixels::Memory(pixels),
            labels,
            num_classes,
            classes_from_labels: false,
            ids,
        })
    }

    /// A dataset of image files (labels already checked by the listing).
    fn of_files(name: String, files: ImageFiles, labels: Vec<i64>, num_classes: usize) -> Self {
        Dataset {
            name,
            image_shape: files.shape(),
            ids: (0..labels.len() as u64).collect(),
            pixels: Pixels::Files(files),
            labels,
            num_classes,
            classes_from_labels: false,
        }
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

    /// The pixels of samples `start..end`, contiguous NCHW (decoded for
    /// image files).
    pub fn pixels_of(&self, range: std::ops::Range<usize>) -> Result<Cow<'_, [f32]>> {
        let n = self.image_len();
        match &self.pixels {
            Pixels::Memory(p) => Ok(Cow::Borrowed(&p[range.start * n..range.end * n])),
            Pixels::Files(_) => {
                let positions: Vec<usize> = range.collect();
                self.gather(&positions).map(Cow::Owned)
            }
        }
    }

    /// The pixels of the samples at `positions`, in that order, NCHW.
    pub fn gather(&self, positions: &[usize]) -> Result<Vec<f32>> {
        let n = self.image_len();
        let mut out = Vec::with_capacity(positions.len() * n);
        match &self.pixels {
            Pixels::Memory(p) => {
                for &i in positions {
                    out.extend_from_slice(&p[i * n..(i + 1) * n]);
                }
            }
            Pixels::Files(files) => files.gather(positions, &mut out)?,
        }
        Ok(out)
    }

    /// Whether reading pixels decodes files (worth overlapping with the
    /// model's work), rather than copying memory.
    pub fn decodes_on_demand(&self) -> bool {
        matches!(&self.pixels, Pixels::Files(f) if f.decodes_on_demand())
    }

    /// Sample `i`'s file (relative to its folder or list), for image
    /// collections.
    pub fn file_name(&self, i: usize) -> Option<&str> {
        match &self.pixels {
            Pixels::Memory(_) => None,
            Pixels::Files(files) => files.name(i),
        }
    }

    /// Each sample's file name, for image collections.
    pub fn file_names(&self) -> Option<Vec<String>> {
        match &self.pixels {
            Pixels::Memory(_) => None,
            Pixels::Files(files) => Some(files.names().map(str::to_string).collect()),
        }
    }

    /// Feeds what decides the samples (ids, labels, pixels or the files'
    /// bytes and the transform) to `hasher`.
    pub fn hash_into(&self, hasher: &mut sha2::Sha256) -> Result<()> {
        use sha2::Digest;
        for (id, label) in self.ids.iter().zip(&self.labels) {
            hasher.update(id.to_le_bytes());
            hasher.update(label.to_le_bytes());
        }
        match &self.pixels {
            Pixels::Memory(p) => {
                for pixel in p {
                    hasher.update(pixel.to_le_bytes());
                }
                Ok(())
            }
            Pixels::Files(files) => files.hash_into(hasher),
        }
    }

    /// For image collections: decodes every sample once, so a bad image
    /// stops the run before it starts (or, with `skip_bad`, is dropped and
    /// returned). Keeps the preprocessed images when they fit. Other
    /// datasets are ready already.
    pub fn prepare(&mut self, skip_bad: bool) -> Result<Vec<BadImage>> {
        let Pixels::Files(files) = &mut self.pixels else {
            return Ok(Vec::new());
        };
        let bad = files.prepare(&self.ids, skip_bad)?;
        for (i, _) in bad.iter().rev() {
            self.labels.remove(*i);
            self.ids.remove(*i);
        }
        Ok(bad.into_iter().map(|(_, b)| b).collect())
    }

    /// Splits off the samples from `at` on (ids kept), leaving the first `at`.
    pub fn split_off(&mut self, at: usize) -> Dataset {
        let at = at.min(self.len());
        let pixels = match &mut self.pixels {
            Pixels::Memory(p) => {
                Pixels::Memory(p.split_off(at * self.image_shape.iter().product::<usize>()))
            }
            Pixels::Files(f) => Pixels::Files(f.split_off(at)),
        };
        Dataset {
            name: self.name.clone(),
            image_shape: self.image_shape,
            pixels,
            labels: self.labels.split_off(at),
            num_classes: self.num_classes,
            classes_from_labels: self.classes_from_labels,
            ids: self.ids.split_off(at),
        }
    }

    /// Keeps only the first `n` samples (no-op when `n >= len`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            let per_image = self.image_len();
            match &mut self.pixels {
                Pixels::Memory(p) => p.truncate(n * per_image),
                Pixels::Files(f) => f.truncate(n),
            }
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
    /// torchvision's `ImageFolder`: `DIR/CLASS/IMAGE`.
    ImageFolder(PathBuf),
    /// A list of `path,label` lines.
    Images(PathBuf),
}

/// The `--data` forms, for help texts and messages (the one list).
pub const DATA_FORMS: &str =
    "cifar10:DIR, cifar100:DIR, fashion-mnist[:DIR], mnist:DIR, npz:FILE, \
     imagefolder:DIR (DIR/CLASS/IMAGE, JPEG or PNG) or images:LIST (path,label lines)";

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
            "imagefolder" => Ok(DataSpec::ImageFolder(need_path(path)?)),
            "images" => Ok(DataSpec::Images(need_path(path)?)),
            _ => Err(Error::Usage(format!(
                "--data {spec}: unknown dataset kind `{kind}`; use {DATA_FORMS}"
            ))),
        }
    }
}

impl DataSpec {
    /// Loads the requested split (image collections with their defaults).
    pub fn load(&self, split: Split) -> Result<Dataset> {
        self.load_with(split, &ImageOptions::default())
    }

    /// Whether the data is an image collection (which `--transform`,
    /// `--classes` and `--skip-bad-images` apply to).
    pub fn is_image_collection(&self) -> bool {
        matches!(self, DataSpec::ImageFolder(_) | DataSpec::Images(_))
    }

    /// Loads the requested split; image collections are listed, not
    /// decoded (see [`Dataset::prepare`]), and hold one split: the one the
    /// user named.
    pub fn load_with(&self, split: Split, options: &ImageOptions) -> Result<Dataset> {
        match self {
            DataSpec::ImageFolder(dir) | DataSpec::Images(dir) => {
                let classes = options
                    .classes
                    .as_deref()
                    .map(images::listing::read_classes)
                    .transpose()?;
                let (listing, name) = if let DataSpec::ImageFolder(_) = self {
                    (
                        images::listing::image_folder(dir, classes)?,
                        format!("imagefolder:{}", dir.display()),
                    )
                } else {
                    (
                        images::listing::image_list(dir, classes)?,
                        format!("images:{}", dir.display()),
                    )
                };
                let labels = listing.entries.iter().map(|e| e.label).collect();
                let files = ImageFiles::new(listing.entries, options.transform.clone(), dir)?;
                let mut data = Dataset::of_files(name, files, labels, listing.classes.len());
                // Without --classes, the folders (or labels) found are the
                // classes, perhaps a subset of the model's.
                data.classes_from_labels = options.classes.is_none();
                Ok(data)
            }
            _ => self.load_in_memory(split),
        }
    }

    fn load_in_memory(&self, split: Split) -> Result<Dataset> {
        match self {
            DataSpec::Cifar10(dir) => load_cifar(dir, CifarVariant::Cifar10, split),
            DataSpec::Cifar100(dir) => load_cifar(dir, CifarVariant::Cifar100, split),
            DataSpec::FashionMnist(dir) => idx::load_idx_dir(dir, "fashion-mnist", split),
            DataSpec::Mnist(dir) => idx::load_idx_dir(dir, "mnist", split),
            // An npz file holds one split: the user chose it by naming the file.
            DataSpec::Npz(file) => load_npz(file),
            DataSpec::ImageFolder(_) | DataSpec::Images(_) => {
                self.load_with(split, &ImageOptions::default())
            }
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
