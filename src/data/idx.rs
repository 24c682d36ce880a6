//! IDX files (LeCun's MNIST format, also Fashion-MNIST), raw or gzipped.

use super::{Dataset, Split};
use crate::error::{Error, Result};
use crate::limits::{self, DeclaredRead};
use std::path::{Path, PathBuf};

/// The element type code for unsigned bytes, the only one image datasets use.
const IDX_UBYTE: u8 = 0x08;

/// A parsed IDX array of unsigned bytes.
struct IdxArray {
    dims: Vec<usize>,
    bytes: Vec<u8>,
}

/// Reads an IDX file, gunzipping it when its name ends in `.gz`: the header
/// first, then exactly the bytes its dimensions declare (checked against the
/// memory ceiling before they are allocated or inflated).
fn parse_idx(path: &Path) -> Result<IdxArray> {
    use std::io::Read;
    let (file, _) = limits::open_regular(path)?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let unreadable = |e: std::io::Error| {
        Error::data(
            path,
            format!("cannot be read as IDX ({e}); the file is truncated or not gzip"),
        )
    };
    let mut magic = [0u8; 4];
    let got = crate::limits::read_up_to(&mut reader, &mut magic).map_err(unreadable)?;
    if got < 4 || magic[0] != 0 || magic[1] != 0 {
        return Err(Error::data(
            path,
            "not an IDX file (it must start with two zero bytes)",
        ));
    }
    if magic[2] != IDX_UBYTE {
        return Err(Error::data(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (expected 0x08, ubyte)",
                magic[2]
            ),
        ));
    }
    let ndim = magic[3] as usize;
    let mut header = vec![0u8; 4 * ndim];
    let got = crate::limits::read_up_to(&mut reader, &mut header).map_err(unreadable)?;
    if got < header.len() {
        return Err(Error::data(
            path,
            format!(
                "truncated IDX header: {} bytes, expected {}",
                4 + got,
                4 + header.len()
            ),
        ));
    }
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let len = limits::check_elements(
        path,
        &format!("IDX data of dims {dims:?}"),
        limits::product(&dims),
        1,
    )?;
    match limits::read_declared(&mut reader, len).map_err(unreadable)? {
        DeclaredRead::Exact(bytes) => Ok(IdxArray { dims, bytes }),
        DeclaredRead::Short(bytes) => Err(Error::data(
            path,
            format!(
                "IDX file of dims {dims:?} should hold {len} bytes of data (after gunzip), found {}; the file is truncated",
                bytes.len()
            ),
        )),
        DeclaredRead::Longer => Err(Error::data(
            path,
            format!("IDX file of dims {dims:?} holds more than the {len} bytes of data they declare; the file is corrupt"),
        )),
    }
}

/// Loads an images file (`[N, H, W]` or `[N, C, H, W]`) and its labels file.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    name: &str,
    num_classes: usize,
) -> Result<Dataset> {
    let img = parse_idx(images)?;
    let lab = parse_idx(labels)?;
    limits::check_elements(images, "images as 32-bit floats", Some(img.bytes.len()), 4)?;
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
        let pixels = ds.pixels_of(0..ds.len()).unwrap();
        assert_eq!(pixels[1], 1.0);
        assert!((pixels[2] - 0.2).abs() < 1e-7);
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
        assert!(msg.contains("should hold 8 bytes"), "{msg}");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn declared_sizes_are_checked_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // 2^32-1 cubed: overflows, and would be far above the ceiling anyway.
        let huge = idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]);
        let path = dir.path().join("huge-idx3-ubyte");
        std::fs::write(&path, &huge).unwrap();
        let msg = parse_idx(&path).err().unwrap().to_string();
        assert!(msg.contains("memory ceiling"), "{msg}");
        // A gzip stream that inflates far past what its header declares
        // (1000× here) is refused once it passes the declared size.
        let mut bomb = idx_bytes(&[2, 2, 2], &[0; 8]);
        bomb.extend(std::iter::repeat_n(0u8, 4 << 20));
        let path = dir.path().join("bomb-idx3-ubyte.gz");
        let compressed = gzip(&bomb);
        assert!(compressed.len() * 100 < bomb.len());
        std::fs::write(&path, compressed).unwrap();
        let msg = parse_idx(&path).err().unwrap().to_string();
        assert!(msg.contains("more than the 8 bytes"), "{msg}");
        // A header cut short, inside a gzip stream too.
        let path = dir.path().join("short-idx3-ubyte.gz");
        std::fs::write(&path, gzip(&[0, 0, 8, 3, 0, 0])).unwrap();
        let msg = parse_idx(&path).err().unwrap().to_string();
        assert!(msg.contains("truncated IDX header"), "{msg}");
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
