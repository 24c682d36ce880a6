//! The memory ceiling, and bounded reading of files that may be hostile.
//!
//! Every size a file declares (an IDX or `.npy` header's dimensions, an
//! archive member's uncompressed size, a model's input shape) is multiplied
//! with checked arithmetic and compared with the ceiling *before* anything
//! of that size is allocated; decompression stops at the size the header
//! promised. The ceiling is 16 GiB unless `UPAT_MAX_MEMORY` says otherwise
//! (bytes, or a number with K, M, G or T: `UPAT_MAX_MEMORY=64G`). It bounds
//! each single allocation from declared sizes, not the process as a whole.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// The ceiling when `UPAT_MAX_MEMORY` is not set.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;

/// The ceiling in bytes: `UPAT_MAX_MEMORY`, else [`DEFAULT_MAX_BYTES`].
pub fn max_bytes() -> Result<u64> {
    static CEILING: OnceLock<std::result::Result<u64, String>> = OnceLock::new();
    CEILING
        .get_or_init(|| match std::env::var("UPAT_MAX_MEMORY") {
            Err(_) => Ok(DEFAULT_MAX_BYTES),
            Ok(text) => parse_size(&text).ok_or_else(|| {
                format!("UPAT_MAX_MEMORY={text} is not a size: write bytes, or a number with K, M, G or T (e.g. 64G)")
            }),
        })
        .clone()
        .map_err(Error::Usage)
}

/// `1234`, `512M`, `64G`, `1T` (powers of 1024).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 10),
        (i, 'm' | 'M') => (&text[..i], 20),
        (i, 'g' | 'G') => (&text[..i], 30),
        (i, 't' | 'T') => (&text[..i], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

/// The product of declared dimensions, `None` on overflow.
pub fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks that `count` elements of `element_bytes` each fit under the
/// ceiling; `what` names them in the error (`"images of shape [..]"`).
pub fn check_elements(
    path: &Path,
    what: &str,
    count: Option<usize>,
    element_bytes: usize,
) -> Result<usize> {
    let ceiling = max_bytes()?;
    let bytes = count.and_then(|c| c.checked_mul(element_bytes));
    match bytes {
        Some(b) if (b as u64) <= ceiling => Ok(count.unwrap_or(0)),
        _ => Err(Error::data(
            path,
            format!(
                "declares {what}, {}, above the memory ceiling of {} (UPAT_MAX_MEMORY); \
                 the file is corrupt or hostile, or raise the ceiling if it is genuine",
                bytes.map_or("more than 2^64 bytes".into(), human),
                human(ceiling as usize)
            ),
        )),
    }
}

pub(crate) fn human(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Opens `path` for reading if it is a regular file (not a device, FIFO or
/// directory, which could be read forever) no larger than the ceiling;
/// returns it with its size.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    // Before opening: opening a FIFO for reading blocks until a writer comes.
    let before = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !before.is_file() {
        return Err(Error::data(
            path,
            "is not a regular file (a device, pipe or directory); give the path of a file",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::data(
            path,
            "is not a regular file (a device, pipe or directory); give the path of a file",
        ));
    }
    check_elements(path, "a file size", Some(meta.len() as usize), 1)?;
    Ok((file, meta.len()))
}

/// Reads a whole regular file under the ceiling.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// Reads exactly `len` bytes (a size a header declared, already checked
/// against the ceiling) and then requires the end of the stream: a stream
/// that inflates past what its header promised is refused once it passes
/// that size, never read in full.
pub fn read_declared(reader: &mut impl Read, len: usize) -> std::io::Result<DeclaredRead> {
    let mut bytes = Vec::with_capacity(len);
    let got = reader.by_ref().take(len as u64).read_to_end(&mut bytes)?;
    if got < len {
        return Ok(DeclaredRead::Short(bytes));
    }
    let mut probe = [0u8; 1];
    Ok(if reader.read(&mut probe)? == 0 {
        DeclaredRead::Exact(bytes)
    } else {
        DeclaredRead::Longer
    })
}

/// Fills `buf` as far as the stream allows; returns how much it filled.
pub fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// What [`read_declared`] found.
pub enum DeclaredRead {
    Exact(Vec<u8>),
    /// The stream ended early: these are the bytes it had.
    Short(Vec<u8>),
    /// The stream holds more than declared (not read further).
    Longer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_products() {
        assert_eq!(parse_size("64G"), Some(64 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(product(&[2, 3, 4]), Some(24));
        assert_eq!(product(&[1 << 40, 1 << 40]), None);
    }

    #[test]
    fn declared_reads_stop_at_the_declared_size() {
        let data = [7u8; 100];
        assert!(
            matches!(read_declared(&mut &data[..], 100).unwrap(), DeclaredRead::Exact(b) if b.len() == 100)
        );
        assert!(matches!(
            read_declared(&mut &data[..], 50).unwrap(),
            DeclaredRead::Longer
        ));
        assert!(
            matches!(read_declared(&mut &data[..], 150).unwrap(), DeclaredRead::Short(b) if b.len() == 100)
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_not_read() {
        let err = read_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = check_elements(Path::new("x"), "images", Some(1 << 62), 4).unwrap_err();
        assert!(err.to_string().contains("memory ceiling"), "{err}");
        assert!(check_elements(Path::new("x"), "images", None, 4).is_err());
    }
}
