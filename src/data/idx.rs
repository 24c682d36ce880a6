//! IDX files (LeCun's MNIST format, also Fashion-MNIST), raw or gzipped.

use super::{read_maybe_gz, Dataset, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The element type code for unsigned bytes, the only one image datasets use.
const IDX_UBYTE: u8 = 0x08;

/// A parsed IDX array of unsigned bytes.
struct IdxArray {
    dims: Vec<usize>,
    bytes: Vec<u8>,
}

fn parse_idx(path: &Path, buf: Vec<u8>) -> Result<IdxArray> {
    if buf.len() < 4 || buf[0] != 0 || buf[1] != 0 {
        return Err(Error::data(
            path,
            "not an IDX file (it must start with two zero bytes)",
        ));
    }
    if buf[2] != IDX_UBYTE {
        return Err(Error::data(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (expected 0x08, ubyte)",
                buf[2]
            ),
        ));
    }
    let ndim = buf[3] as usize;
    let header_len = 4 + 4 * ndim;
    if buf.len() < header_len {
        return Err(Error::data(
            path,
            format!(
                "truncated IDX header: {} bytes, expected at least {header_len}",
                buf.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| u32::from_be_bytes(buf[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let expected = header_len + dims.iter().product::<usize>();
    if buf.len() != expected {
        return Err(Error::data(
            path,
            format!("IDX file of dims {dims:?} should be {expected} bytes (after gunzip), found {}; the file is truncated or corrupt", buf.len()),
        ));
    }
    let mut bytes = buf;
    bytes.drain(..header_len);
    Ok(IdxArray { dims, bytes })
}

/// Loads an images file (`[N, H, W]` or `[N, C, H, W]`) and its labels file.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    name: &str,
    num_classes: usize,
) -> Result<Dataset> {
    let img = parse_idx(images, read_maybe_gz(images)?)?;
    let lab = parse_idx(labels, read_maybe_gz(labels)?)?;
    let image_shape = match img.dims[..] {
        [_, h, w] => [1, h, w],
        [_, c, h, w] => [c, h, w],
        _ => {
            return Err(Error::data(
                images,
                format!("IDX images must have 3 or 4 dims, found {:?}", img.dims),
            ))
        }
    };
    if lab.dims.len() != 1 {
        return Err(Error::data(
            labels,
            format!("IDX labels must have 1 dim, found {:?}", lab.dims),
        ));
    }
    if lab.dims[0] != img.dims[0] {
        return Err(Error::data(
            labels,
            format!(
                "{} labels for {} images in {}",
                lab.dims[0],
                img.dims[0],
                images.display()
            ),
        ));
    }
    let pixels = img.bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
    let labels_i64 = lab.bytes.iter().map(|&b| i64::from(b)).collect();
    Dataset::new(name, image_shape, pixels, labels_i64, num_classes, labels)
}

/// Finds `{prefix}-{kind}-idx{n}-ubyte[.gz]` (or the `.idxN-ubyte` spelling) in `dir`.
fn find_idx_file(dir: &Path, prefix: &str, kind: &str, ndim: u8) -> Result<PathBuf> {
    let stems = [
        format!("{prefix}-{kind}-idx{ndim}-ubyte"),
        format!("{prefix}-{kind}.idx{ndim}-ubyte"),
    ];
    for stem in &stems {
        for suffix in ["", ".gz"] {
            let candidate = dir.join(format!("{stem}{suffix}"));
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let hint = if dir.starts_with(super::FASHION_MNIST_SYSTEM_DIR) {
        " (install it with `apt-get install dataset-fashion-mnist`)"
    } else {
        ""
    };
    Err(Error::data(
        dir,
        format!("no {}[.gz] in this directory{hint}", stems[0]),
    ))
}

/// Loads the train or test split of an MNIST-layout directory.
pub(super) fn load_idx_dir(dir: &Path, name: &str, split: Split) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = find_idx_file(dir, prefix, "images", 3)?;
    let labels = find_idx_file(dir, prefix, "labels", 1)?;
    load_idx_pair(&images, &labels, name, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, IDX_UBYTE, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_raw_and_gz_and_scales_to_unit_interval() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = idx_bytes(&[2, 2, 2], &[0, 255, 51, 102, 1, 2, 3, 4]);
        let labs = idx_bytes(&[2], &[3, 9]);
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), &imgs).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &labs).unwrap();
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte.gz"),
            gz.finish().unwrap(),
        )
        .unwrap();
        let ds = load_idx_dir(dir.path(), "mnist", Split::Test).unwrap();
        assert_eq!(ds.image_shape, [1, 2, 2]);
        assert_eq!(ds.labels, vec![3, 9]);
        assert_eq!(ds.pixels[1], 1.0);
        assert!((ds.pixels[2] - 0.2).abs() < 1e-7);
    }

    #[test]
    fn truncated_file_names_file_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = idx_bytes(&[2, 2, 2], &[0, 255, 51]);
        let path = dir.path().join("train-images-idx3-ubyte");
        std::fs::write(&path, &imgs).unwrap();
        std::fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            idx_bytes(&[2], &[0, 1]),
        )
        .unwrap();
        let msg = load_idx_dir(dir.path(), "mnist", Split::Train)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains("should be 24 bytes"), "{msg}");
    }

    #[test]
    fn missing_files_and_label_count_mismatch_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_idx_dir(dir.path(), "mnist", Split::Train).is_err());
        std::fs::write(
            dir.path().join("train-images-idx3-ubyte"),
            idx_bytes(&[2, 1, 1], &[0, 1]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            idx_bytes(&[3], &[0, 1, 2]),
        )
        .unwrap();
        let msg = load_idx_dir(dir.path(), "mnist", Split::Train)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("3 labels for 2 images"), "{msg}");
    }
}
