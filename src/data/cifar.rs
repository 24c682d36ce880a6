//! CIFAR-10 and CIFAR-100 in their binary distribution format.
//!
//! CIFAR-10: `data_batch_{1..5}.bin` and `test_batch.bin`, records of one label
//! byte then 3072 pixel bytes (red, green, blue planes of 32×32, row-major).
//! CIFAR-100: `train.bin` and `test.bin`, records of a coarse label byte, a fine
//! label byte, then the same 3072 pixel bytes. We use the fine labels (100 classes).

use super::{Dataset, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const PIXELS_PER_IMAGE: usize = 3 * 32 * 32;
/// Records in each file of the official distribution.
const RECORDS_PER_OFFICIAL_FILE: usize = 10_000;

/// Which of the two CIFAR datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarVariant {
    Cifar10,
    Cifar100,
}

impl CifarVariant {
    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }

    fn num_classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar10",
            CifarVariant::Cifar100 => "cifar100",
        }
    }

    /// The sub-directory the official tarball unpacks to.
    fn archive_dir(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarVariant::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (CifarVariant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (CifarVariant::Cifar100, Split::Train) => vec!["train.bin".into()],
            (CifarVariant::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }
}

/// Loads a split from `dir`, or from the archive's sub-directory inside `dir`.
pub fn load_cifar(dir: &Path, variant: CifarVariant, split: Split) -> Result<Dataset> {
    let files = variant.files(split);
    let base = [dir.to_path_buf(), dir.join(variant.archive_dir())]
        .into_iter()
        .find(|d| d.join(&files[0]).is_file())
        .ok_or_else(|| {
            Error::data(
                dir,
                format!(
                    "no {} here nor in {}/ (expected the binary version of {})",
                    files[0],
                    variant.archive_dir(),
                    variant.name()
                ),
            )
        })?;
    let record_len = variant.label_bytes() + PIXELS_PER_IMAGE;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut last_path = PathBuf::new();
    for file in &files {
        let path = base.join(file);
        let bytes = crate::limits::read_regular(&path)?;
        crate::limits::check_elements(&path, "images as 32-bit floats", Some(bytes.len()), 4)?;
        if bytes.is_empty() || bytes.len() % record_len != 0 {
            return Err(Error::data(
                &path,
                format!(
                    "{} bytes is not a whole number of {record_len}-byte records ({} label byte(s) + {PIXELS_PER_IMAGE} pixels); \
                     the official file is {} bytes. The file is truncated or not the binary version of {}",
                    bytes.len(),
                    variant.label_bytes(),
                    record_len * official_records(variant, split),
                    variant.name()
                ),
            ));
        }
        for record in bytes.chunks_exact(record_len) {
            // CIFAR-100 keeps the fine label second.
            labels.push(i64::from(record[variant.label_bytes() - 1]));
            pixels.extend(
                record[variant.label_bytes()..]
                    .iter()
                    .map(|&b| f32::from(b) / 255.0),
            );
        }
        last_path = path;
    }
    Dataset::new(
        variant.name(),
        [3, 32, 32],
        pixels,
        labels,
        variant.num_classes(),
        &last_path,
    )
}

fn official_records(variant: CifarVariant, split: Split) -> usize {
    match (variant, split) {
        (CifarVariant::Cifar100, Split::Train) => 5 * RECORDS_PER_OFFICIAL_FILE,
        _ => RECORDS_PER_OFFICIAL_FILE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: &[u8], fill: u8) -> Vec<u8> {
        let mut r = labels.to_vec();
        r.extend((0..PIXELS_PER_IMAGE).map(|i| if i == 0 { 255 } else { fill }));
        r
    }

    #[test]
    fn cifar10_reads_all_train_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        for i in 1..=5u8 {
            let mut bytes = record(&[i], i);
            bytes.extend(record(&[9], 0));
            std::fs::write(sub.join(format!("data_batch_{i}.bin")), bytes).unwrap();
        }
        let ds = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Train).unwrap();
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.labels, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
        assert_eq!(ds.image_shape, [3, 32, 32]);
        let pixels = ds.pixels_of(0..1).unwrap();
        assert_eq!(pixels[0], 1.0);
        assert_eq!(pixels[1], 1.0 / 255.0);
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record(&[3, 77], 10);
        bytes.extend(record(&[19, 99], 20));
        std::fs::write(dir.path().join("test.bin"), bytes).unwrap();
        let ds = load_cifar(dir.path(), CifarVariant::Cifar100, Split::Test).unwrap();
        assert_eq!(ds.labels, vec![77, 99]);
        assert_eq!(ds.num_classes, 100);
    }

    #[test]
    fn truncated_file_names_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record(&[1], 0);
        bytes.truncate(3000);
        std::fs::write(dir.path().join("test_batch.bin"), bytes).unwrap();
        let msg = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test_batch.bin") && msg.contains("30730000"),
            "{msg}"
        );
    }
}
