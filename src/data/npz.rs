//! `.npz` archives holding `x` (images) and `y` (integer labels).
//!
//! `x` is either float (`f4`/`f8`) NCHW in `[0, 1]`, or `uint8` NHWC in
//! `0..=255` (the layout images are usually saved in); a 3-dim `x` is
//! single-channel. `y` may be any integer type.

use super::Dataset;
use crate::error::{Error, Result};
use crate::limits::DeclaredRead;
use std::io::Read;
use std::path::Path;

/// One array read from an `.npy` member.
struct NpyArray {
    descr: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The longest `.npy` header accepted (numpy writes under 1 KiB).
const MAX_NPY_HEADER: usize = 1 << 20;

/// Reads an `.npy` array from `reader`: the header, then exactly the bytes
/// its shape and dtype declare (checked against the memory ceiling first),
/// then the end of the member — a member that inflates past what its header
/// promised is refused there, not read in full.
fn parse_npy(origin: &Path, member: &str, reader: &mut impl Read) -> Result<NpyArray> {
    let bad = |msg: String| Error::data(origin, format!("member {member}: {msg}"));
    let unreadable =
        |e: std::io::Error| bad(format!("cannot be read ({e}); the archive is corrupt"));
    let mut preamble = [0u8; 10];
    let got = crate::limits::read_up_to(reader, &mut preamble).map_err(unreadable)?;
    if got < 10 || &preamble[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy array (bad magic)".into()));
    }
    let header_len = match preamble[6] {
        1 => usize::from(u16::from_le_bytes([preamble[8], preamble[9]])),
        2 | 3 => {
            let mut rest = [0u8; 2];
            if crate::limits::read_up_to(reader, &mut rest).map_err(unreadable)? < 2 {
                return Err(bad("truncated .npy header".into()));
            }
            u32::from_le_bytes([preamble[8], preamble[9], rest[0], rest[1]]) as usize
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    if header_len > MAX_NPY_HEADER {
        return Err(bad(format!(
            "declares a {header_len}-byte header; numpy writes them under 1 KiB: the file is corrupt"
        )));
    }
    let mut header = vec![0u8; header_len];
    if crate::limits::read_up_to(reader, &mut header).map_err(unreadable)? < header_len {
        return Err(bad("truncated .npy header".into()));
    }
    let header = std::str::from_utf8(&header).map_err(|_| bad("header is not text".into()))?;
    let descr = header_value(header, "descr")
        .and_then(quoted)
        .ok_or_else(|| bad("header has no descr".into()))?;
    if header_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let shape_text =
        header_value(header, "shape").ok_or_else(|| bad("header has no shape".into()))?;
    let shape = shape_text
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad shape {shape_text}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let item = element_size(&descr).ok_or_else(|| {
        bad(format!(
            "unsupported dtype `{}`; save x as float32 or uint8 and y as an integer type",
            descr.escape_debug()
        ))
    })?;
    let len = crate::limits::check_elements(
        origin,
        &format!("{member} of shape {shape:?} and dtype {descr}"),
        crate::limits::product(&shape),
        item,
    )? * item;
    match crate::limits::read_declared(reader, len).map_err(unreadable)? {
        DeclaredRead::Exact(data) => Ok(NpyArray { descr, shape, data }),
        DeclaredRead::Short(data) => Err(bad(format!(
            "shape {shape:?} of {descr} needs {len} bytes, found {}; the file is truncated",
            data.len()
        ))),
        DeclaredRead::Longer => Err(bad(format!(
            "holds more than the {len} bytes its shape {shape:?} of {descr} declares; the file is corrupt"
        ))),
    }
}

/// The text after `'key':` in a numpy header dict, up to the end of the dict.
fn header_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

/// The contents of a leading `'...'` or `"..."`.
fn quoted(text: &str) -> Option<String> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &text[1..];
    Some(rest[..rest.find(quote)?].to_string())
}

fn element_size(descr: &str) -> Option<usize> {
    if !descr.is_ascii() || descr.len() < 2 {
        return None;
    }
    let (order, kind) = descr.split_at(1);
    if !matches!(order, "<" | "|" | "=") {
        return None; // big-endian data is rare enough to refuse clearly
    }
    match kind {
        "f4" | "i4" | "u4" => Some(4),
        "f8" | "i8" | "u8" => Some(8),
        "i2" | "u2" => Some(2),
        "u1" | "i1" | "b1" => Some(1),
        _ => None,
    }
}

fn as_f64s(a: &NpyArray) -> Vec<f64> {
    let kind = &a.descr[1..];
    let size = element_size(&a.descr).unwrap();
    a.data
        .chunks_exact(size)
        .map(|c| match kind {
            "f4" => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
            "f8" => f64::from_le_bytes(c.try_into().unwrap()),
            "i4" => f64::from(i32::from_le_bytes(c.try_into().unwrap())),
            "u4" => f64::from(u32::from_le_bytes(c.try_into().unwrap())),
            "i8" => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            "u8" => u64::from_le_bytes(c.try_into().unwrap()) as f64,
            "i2" => f64::from(i16::from_le_bytes(c.try_into().unwrap())),
            "u2" => f64::from(u16::from_le_bytes(c.try_into().unwrap())),
            "i1" => f64::from(c[0] as i8),
            _ => f64::from(c[0]),
        })
        .collect()
}

fn read_member(
    path: &Path,
    archive: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
) -> Result<NpyArray> {
    let member = format!("{name}.npy");
    let mut file = archive.by_name(&member).map_err(|_| {
        Error::data(
            path,
            format!("no array `{name}` in this .npz (it needs `x` images and `y` labels)"),
        )
    })?;
    parse_npy(path, &member, &mut file)
}

/// Reads one float array of an `.npz` archive: its shape and values as `f32`.
pub fn read_npz_f32(path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let (file, _) = crate::limits::open_regular(path)?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::data(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let array = read_member(path, &mut archive, name)?;
    let values = as_f64s(&array).into_iter().map(|v| v as f32).collect();
    Ok((array.shape, values))
}

/// Loads `x` and `y` from an `.npz` archive.
pub fn load_npz(path: &Path) -> Result<Dataset> {
    let (file, _) = crate::limits::open_regular(path)?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::data(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let x = read_member(path, &mut archive, "x")?;
    let y = read_member(path, &mut archive, "y")?;
    if y.descr.contains('f') {
        return Err(Error::data(
            path,
            format!("labels `y` must be integers, found {}", y.descr),
        ));
    }
    let n = *x.shape.first().unwrap_or(&0);
    if y.shape != [n] {
        return Err(Error::data(
            path,
            format!(
                "`y` has shape {:?}, expected [{n}] to match `x` {:?}",
                y.shape, x.shape
            ),
        ));
    }
    crate::limits::check_elements(
        path,
        &format!(
            "`x` of shape {:?}, as 64-bit values while converting,",
            x.shape
        ),
        crate::limits::product(&x.shape),
        8,
    )?;
    let values = as_f64s(&x);
    let is_uint8 = x.descr.ends_with("u1");
    let (image_shape, pixels): ([usize; 3], Vec<f32>) = match (&x.shape[..], is_uint8) {
        (&[_, h, w], _) => ([1, h, w], scale(&values, is_uint8)),
        (&[_, c, h, w], false) => ([c, h, w], values.iter().map(|&v| v as f32).collect()),
        (&[_, h, w, c], true) => ([c, h, w], nhwc_to_nchw(&scale(&values, true), n, h, w, c)),
        _ => {
            return Err(Error::data(
                path,
                format!("`x` must have 3 or 4 dims, found {:?}", x.shape),
            ))
        }
    };
    if !is_uint8 && !x.descr.contains('f') {
        return Err(Error::data(
            path,
            format!(
                "`x` must be float in [0,1] (NCHW) or uint8 (NHWC), found {}",
                x.descr
            ),
        ));
    }
    let labels: Vec<i64> = as_f64s(&y).into_iter().map(|v| v as i64).collect();
    let num_classes = labels
        .iter()
        .copied()
        .max()
        .map_or(0, |m| m.max(0) as usize + 1);
    let name = format!(
        "npz:{}",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    let mut data = Dataset::new(name, image_shape, pixels, labels, num_classes, path)?;
    data.classes_from_labels = true;
    Ok(data)
}

/// An `.npy` member the way numpy writes it (format version 1.0).
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = npy_header(descr, shape, data.len());
    out.extend_from_slice(data);
    out
}

/// An `.npy` header (format version 1.0), in a buffer with room for
/// `data_len` bytes of data after it.
fn npy_header(descr: &str, shape: &[usize], data_len: usize) -> Vec<u8> {
    let shape_txt = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data_len);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Writes an archive of `members`, atomically (see [`crate::atomic`]).
fn write_members(
    path: &Path,
    members: &[(&str, Vec<u8>)],
    compression: zip::CompressionMethod,
) -> Result<()> {
    use std::io::Write;
    crate::atomic::write_atomic_with(path, |tmp| {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(tmp)?);
        for (name, bytes) in members {
            // zip64 for members of 4 GiB and more.
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(compression)
                .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
            zip.start_file(format!("{name}.npy"), options)
                .map_err(std::io::Error::other)?;
            zip.write_all(bytes)?;
        }
        zip.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

/// Saves a dataset as `.npz` (`x` float32 NCHW, `y` int64, `ids` uint64:
/// each sample's id), the format `load_npz` reads and numpy's `np.load`
/// opens. Image collections are decoded here, under the memory ceiling.
pub fn save_npz(path: &Path, data: &Dataset) -> Result<()> {
    let [c, h, w] = data.image_shape;
    crate::limits::check_elements(
        path,
        &format!(
            "{} images of shape {:?} to write",
            data.len(),
            data.image_shape
        ),
        crate::limits::product(&[data.len(), c, h, w]),
        8,
    )?;
    // Filled a chunk of images at a time: image collections are decoded
    // straight into the member, never held as floats all at once.
    let per_image = c * h * w;
    let mut x = npy_header("<f4", &[data.len(), c, h, w], data.len() * per_image * 4);
    let positions: Vec<usize> = (0..data.len()).collect();
    for chunk in positions.chunks(256) {
        for v in data.gather(chunk)? {
            x.extend_from_slice(&v.to_le_bytes());
        }
    }
    let ids = npy_bytes(
        "<u8",
        &[data.len()],
        &data
            .ids
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let y = npy_bytes(
        "<i8",
        &[data.len()],
        &data
            .labels
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    // Stored, as numpy's `savez` writes: deflating hundreds of megabytes of
    // floats took longer than decoding the images.
    write_members(
        path,
        &[("x", x), ("y", y), ("ids", ids)],
        zip::CompressionMethod::Stored,
    )
}

fn scale(values: &[f64], is_uint8: bool) -> Vec<f32> {
    let s = if is_uint8 { 255.0 } else { 1.0 };
    values.iter().map(|&v| (v / s) as f32).collect()
}

fn nhwc_to_nchw(src: &[f32], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out[((i * c + ch) * h + y) * w + x] = src[((i * h + y) * w + x) * c + ch];
                }
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
        // Deflated, as `np.savez_compressed` writes (and bombs are made).
        write_members(path, members, zip::CompressionMethod::Deflated).unwrap();
    }

    #[test]
    fn uint8_nhwc_becomes_nchw_in_unit_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        // one 1x2 image with 3 channels: pixel0 = (255, 0, 51), pixel1 = (0, 255, 102)
        let x = npy_bytes("|u1", &[1, 1, 2, 3], &[255, 0, 51, 0, 255, 102]);
        let y = npy_bytes("<i8", &[1], &4i64.to_le_bytes());
        write_npz(&path, &[("x", x), ("y", y)]);
        let ds = load_npz(&path).unwrap();
        assert_eq!(ds.image_shape, [3, 1, 2]);
        assert_eq!(
            *ds.pixels_of(0..ds.len()).unwrap(),
            [1.0, 0.0, 0.0, 1.0, 0.2, 0.4]
        );
        assert_eq!(ds.labels, vec![4]);
    }

    #[test]
    fn float_nchw_is_taken_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let vals: Vec<u8> = [0.25f32, 0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_npz(
            &path,
            &[
                ("x", npy_bytes("<f4", &[2, 1, 1, 1], &vals)),
                ("y", npy_bytes("|u1", &[2], &[0, 1])),
            ],
        );
        let ds = load_npz(&path).unwrap();
        assert_eq!(*ds.pixels_of(0..ds.len()).unwrap(), [0.25, 0.5]);
        assert_eq!(ds.labels, vec![0, 1]);
    }

    #[test]
    fn hostile_headers_are_errors_not_panics_or_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let y = || ("y", npy_bytes("|u1", &[1], &[0]));
        let message = |x: Vec<u8>| {
            write_npz(&path, &[("x", x), y()]);
            load_npz(&path).unwrap_err().to_string()
        };
        for descr in ["", "<", "é", "<é4", "\u{1F600}"] {
            let msg = message(npy_bytes(descr, &[1, 1, 1], &[0; 4]));
            assert!(msg.contains("unsupported dtype"), "{descr:?}: {msg}");
        }
        // Shapes whose byte counts overflow or pass the ceiling.
        let msg = message(npy_bytes("<f8", &[usize::MAX / 2, 4, 4], &[]));
        assert!(msg.contains("memory ceiling"), "{msg}");
        let msg = message(npy_bytes("<f4", &[1 << 40, 28, 28], &[]));
        assert!(msg.contains("memory ceiling"), "{msg}");
        // A member that inflates far past what its header declares: one
        // image declared, 8 MiB of zeros behind it (compressed to kilobytes).
        let mut bomb = npy_bytes("|u1", &[1, 1, 1], &[0]);
        bomb.extend(std::iter::repeat_n(0u8, 8 << 20));
        let msg = message(bomb);
        assert!(msg.contains("holds more than the 1 bytes"), "{msg}");
        assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
        // A header length past its member.
        let mut cut = npy_bytes("|u1", &[1, 1, 1], &[0]);
        cut[8] = 0xff;
        cut[9] = 0x7f;
        let msg = message(cut);
        assert!(msg.contains("truncated .npy header"), "{msg}");
    }

    #[test]
    fn bad_archives_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        std::fs::write(&path, b"not a zip").unwrap();
        assert!(load_npz(&path).unwrap_err().to_string().contains("zip"));
        write_npz(&path, &[("x", npy_bytes("<f4", &[2, 1, 1, 1], &[0; 8]))]);
        assert!(load_npz(&path).unwrap_err().to_string().contains("`y`"));
        write_npz(
            &path,
            &[
                ("x", npy_bytes("<f4", &[1, 1, 1, 1], &[0; 4])),
                ("y", npy_bytes("<f4", &[1], &[0; 4])),
            ],
        );
        assert!(load_npz(&path)
            .unwrap_err()
            .to_string()
            .contains("integers"));
        let nan: Vec<u8> = f32::NAN.to_le_bytes().to_vec();
        write_npz(
            &path,
            &[
                ("x", npy_bytes("<f4", &[1, 1, 1, 1], &nan)),
                ("y", npy_bytes("|u1", &[1], &[0])),
            ],
        );
        assert!(load_npz(&path)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
    }
}
