//! JPEG and PNG files to 8-bit RGB or grey, as Pillow decodes and
//! `convert`s them (torchvision's image loader: `Image.open(f).convert("RGB")`).
//!
//! JPEG goes through libjpeg (libjpeg-turbo's decoder, as in Pillow) with
//! the same defaults: integer IDCT and fancy upsampling, so the pixels are
//! Pillow's to the bit. CMYK JPEGs are read inverted (Adobe's convention,
//! which Pillow assumes) and converted with Pillow's formula. PNGs keep
//! their exact values; 16-bit channels keep their high byte as Pillow's
//! `RGB;16B` unpacking does (16-bit grey too, where Pillow would clip at 255
//! instead). Alpha is dropped, not composited, as `convert("RGB")` does.
//!
//! The declared size is checked before any pixel is decoded: above
//! Pillow's decompression-bomb limit or the memory ceiling, the file is
//! refused.

use super::resample::Image8;
use crate::limits;
use mozjpeg_sys::*;
use std::ffi::c_int;

/// Pillow's `DecompressionBombError` threshold (twice `MAX_IMAGE_PIXELS`).
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Decodes `bytes` (a JPEG or PNG file) to `channels` (3: RGB, 1: grey).
/// The error says what is wrong with the file, without naming it.
pub fn decode(bytes: &[u8], channels: usize) -> Result<Image8, String> {
    let decoded = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes)?
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)?
    } else {
        return Err(match sniff(bytes) {
            Some(format) => format!(
                "is a {format} image; upat reads JPEG and PNG: convert it (e.g. PIL: Image.open(f).save(\"x.png\"))"
            ),
            None => "is not a JPEG or PNG image".into(),
        });
    };
    Ok(convert(decoded, channels))
}

fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"BM") {
        Some("BMP")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("WebP")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("TIFF")
    } else if bytes.starts_with(b"GIF8") {
        Some("GIF")
    } else if bytes.len() > 1 && bytes[0] == b'P' && (b'1'..=b'7').contains(&bytes[1]) {
        Some("PNM")
    } else {
        None
    }
}

/// A decoded image before conversion: its Pillow mode.
enum Decoded {
    Grey(Image8),
    Rgb(Image8),
    /// Pillow's CMYK, after the Adobe inversion.
    Cmyk(Image8),
}

fn check_size(width: u64, height: u64, channels: u64) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("declares an empty image ({width}x{height})"));
    }
    let pixels = width.saturating_mul(height);
    if pixels > MAX_PIXELS {
        return Err(format!(
            "declares {width}x{height} pixels, above the decompression-bomb limit of {MAX_PIXELS} (Pillow's): \
             the file is hostile or corrupt"
        ));
    }
    let bytes = pixels.saturating_mul(channels.max(1)).saturating_mul(2);
    let ceiling = limits::max_bytes().map_err(|e| e.to_string())?;
    if bytes > ceiling {
        return Err(format!(
            "declares {width}x{height} pixels, more than the memory ceiling allows (UPAT_MAX_MEMORY)"
        ));
    }
    Ok(())
}

/// Carried through libjpeg's error handler by unwinding (without the panic
/// hook: `resume_unwind` does not call it) to the `catch_unwind` around the
/// decoder.
struct JpegFailure(String);

unsafe extern "C-unwind" fn jpeg_error_exit(cinfo: &mut jpeg_common_struct) {
    let buffer = [0u8; 80];
    // SAFETY: libjpeg calls this with its own live error manager.
    if let Some(format) = unsafe { (*cinfo.err).format_message } {
        unsafe { format(cinfo, &buffer) };
    }
    let message = std::ffi::CStr::from_bytes_until_nul(&buffer)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "corrupt JPEG data".into());
    std::panic::resume_unwind(Box::new(JpegFailure(message)));
}

/// Warnings are ignored as Pillow ignores them, except a premature end of
/// file: a truncated image is an error (Pillow's "image file is truncated").
unsafe extern "C-unwind" fn jpeg_emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: as above.
    if level < 0 && unsafe { (*cinfo.err).msg_code } == JWRN_JPEG_EOF as c_int {
        unsafe { jpeg_error_exit(cinfo) };
    }
}

fn decode_jpeg(bytes: &[u8]) -> Result<Decoded, String> {
    // SAFETY: the structs are plain C data that libjpeg initialises
    // (`jpeg_std_error`, `jpeg_create_decompress`); `bytes` outlives the
    // decompressor, which is destroyed on every path; each scanline pointer
    // points into `out`, sized from the dimensions libjpeg reports.
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        let mut cinfo: jpeg_decompress_struct = std::mem::zeroed();
        let handlers: *mut jpeg_error_mgr = jpeg_std_error(&mut err);
        (*handlers).error_exit = Some(jpeg_error_exit);
        (*handlers).emit_message = Some(jpeg_emit_message);
        cinfo.common.err = handlers;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            jpeg_create_decompress(&mut cinfo);
            jpeg_mem_src(&mut cinfo, bytes.as_ptr(), bytes.len() as _);
            jpeg_read_header(&mut cinfo, 1);
            let cmyk = matches!(
                cinfo.jpeg_color_space,
                J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK
            );
            cinfo.out_color_space = if cmyk {
                J_COLOR_SPACE::JCS_CMYK
            } else if cinfo.num_components == 1 {
                J_COLOR_SPACE::JCS_GRAYSCALE
            } else {
                J_COLOR_SPACE::JCS_RGB
            };
            check_size(
                u64::from(cinfo.image_width),
                u64::from(cinfo.image_height),
                4,
            )?;
            jpeg_start_decompress(&mut cinfo);
            let (w, h, c) = (
                cinfo.output_width as usize,
                cinfo.output_height as usize,
                cinfo.output_components as usize,
            );
            let mut out = vec![0u8; w * h * c];
            while (cinfo.output_scanline as usize) < h {
                let row = cinfo.output_scanline as usize;
                let mut line = out[row * w * c..].as_mut_ptr();
                if jpeg_read_scanlines(&mut cinfo, &mut line, 1) == 0 {
                    return Err("stopped before its last scanline".to_string());
                }
            }
            jpeg_finish_decompress(&mut cinfo);
            let image = Image8 {
                width: w,
                height: h,
                channels: c,
                pixels: out,
            };
            Ok(match c {
                1 => Decoded::Grey(image),
                3 => Decoded::Rgb(image),
                _ => {
                    let mut image = image;
                    image.pixels.iter_mut().for_each(|v| *v = 255 - *v);
                    Decoded::Cmyk(image)
                }
            })
        }));
        jpeg_destroy_decompress(&mut cinfo);
        match result {
            Ok(decoded) => decoded,
            Err(payload) => match payload.downcast::<JpegFailure>() {
                Ok(failure) => Err(format!("is not a valid JPEG: {}", failure.0)),
                Err(other) => std::panic::resume_unwind(other),
            },
        }
    }
}

fn decode_png(bytes: &[u8]) -> Result<Decoded, String> {
    let invalid = |e: png::DecodingError| format!("is not a valid PNG: {e}");
    let ceiling = limits::max_bytes().map_err(|e| e.to_string())?;
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(ceiling).unwrap_or(usize::MAX),
        },
    );
    // Palettes to RGB, grey below 8 bits scaled to 8, tRNS to an alpha
    // channel (which conversion then drops, as Pillow does).
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(invalid)?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    check_size(u64::from(width), u64::from(height), 8)?;
    let size = reader
        .output_buffer_size()
        .ok_or("declares an image too large to decode")?;
    let mut buffer = vec![0u8; size];
    let frame = reader.next_frame(&mut buffer).map_err(invalid)?;
    let (color, depth) = reader.output_color_type();
    let samples = color.samples();
    let bytes_per_sample = if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    if depth != png::BitDepth::Eight && depth != png::BitDepth::Sixteen {
        return Err(format!(
            "has an unexpected bit depth after expansion ({depth:?})"
        ));
    }
    let (w, h) = (width as usize, height as usize);
    let line = frame.line_size;
    let keep = match color {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        _ => 3,
    };
    let mut pixels = Vec::with_capacity(w * h * keep);
    for y in 0..h {
        let row = &buffer[y * line..y * line + w * samples * bytes_per_sample];
        for x in 0..w {
            for ch in 0..keep {
                // Big-endian 16-bit samples: the high byte comes first.
                pixels.push(row[(x * samples + ch) * bytes_per_sample]);
            }
        }
    }
    let image = Image8 {
        width: w,
        height: h,
        channels: keep,
        pixels,
    };
    Ok(if keep == 1 {
        Decoded::Grey(image)
    } else {
        Decoded::Rgb(image)
    })
}

/// Pillow's `MULDIV255`: `a * b / 255`, rounded, in integers.
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's `convert("RGB")` or `convert("L")`.
fn convert(decoded: Decoded, channels: usize) -> Image8 {
    let map = |image: Image8, c: usize, f: &dyn Fn(&[u8], &mut Vec<u8>)| {
        let mut pixels = Vec::with_capacity(image.width * image.height * c);
        for pixel in image.pixels.chunks_exact(image.channels) {
            f(pixel, &mut pixels);
        }
        Image8 {
            width: image.width,
            height: image.height,
            channels: c,
            pixels,
        }
    };
    // ITU-R 601-2 luma in Pillow's fixed point.
    let luma = |p: &[u8]| -> u8 {
        ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000)
            >> 16) as u8
    };
    let cmyk_to_rgb = |p: &[u8]| -> [u8; 3] {
        let nk = 255 - i32::from(p[3]);
        [0, 1, 2].map(|i| (nk - muldiv255(i32::from(p[i]), nk)).clamp(0, 255) as u8)
    };
    match (decoded, channels) {
        (Decoded::Grey(image), 1) | (Decoded::Rgb(image), 3) => image,
        (Decoded::Grey(image), _) => map(image, 3, &|p, out| out.extend_from_slice(&[p[0]; 3])),
        (Decoded::Rgb(image), _) => map(image, 1, &|p, out| out.push(luma(p))),
        (Decoded::Cmyk(image), 1) => map(image, 1, &|p, out| out.push(luma(&cmyk_to_rgb(p)))),
        (Decoded::Cmyk(image), _) => {
            map(image, 3, &|p, out| out.extend_from_slice(&cmyk_to_rgb(p)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_headers_are_refused_before_decoding() {
        // A PNG declaring 100000 x 100000 pixels (10^10: a bomb).
        let chunk = |kind: &[u8], data: &[u8]| -> Vec<u8> {
            let mut out = (data.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            // CRC-32 of the chunk type and data, as PNG requires.
            let mut crc = 0xFFFF_FFFFu32;
            for &b in kind.iter().chain(data) {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        0xEDB8_8320 ^ (crc >> 1)
                    } else {
                        crc >> 1
                    };
                }
            }
            out.extend_from_slice(&(!crc).to_be_bytes());
            out
        };
        let mut header = 100_000u32.to_be_bytes().repeat(2);
        header.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &header));
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]));
        png.extend(chunk(b"IEND", &[]));
        let err = decode(&png, 3).unwrap_err();
        assert!(err.contains("decompression-bomb"), "{err}");
        // A real JPEG whose frame header is edited to 65000 x 65000.
        let mut jpeg = include_bytes!("../../../tests/fixtures/images/a420.jpg").to_vec();
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline JPEG has SOF0");
        // Marker, length (2), precision (1), then height and width.
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        let err = decode(&jpeg, 3).unwrap_err();
        assert!(
            err.contains("65000x65000") && err.contains("decompression-bomb"),
            "{err}"
        );
        // A JPEG that ends after its start marker.
        let err = decode(b"\xFF\xD8\xFF\xE0\0\x10JFIF", 3).unwrap_err();
        assert!(err.contains("not a valid JPEG"), "{err}");
        assert!(decode(b"BM....", 3).unwrap_err().contains("BMP"));
        assert!(decode(b"hello", 3)
            .unwrap_err()
            .contains("not a JPEG or PNG"));
        assert!(decode(b"", 3).unwrap_err().contains("not a JPEG or PNG"));
    }

    #[test]
    fn conversions_follow_pillows_arithmetic() {
        let rgb = Image8 {
            width: 1,
            height: 1,
            channels: 3,
            pixels: vec![255, 128, 0],
        };
        // (255*19595 + 128*38470 + 0x8000) >> 16 = 151.
        assert_eq!(convert(Decoded::Rgb(rgb), 1).pixels, [151]);
        let cmyk = Image8 {
            width: 1,
            height: 1,
            channels: 4,
            pixels: vec![0, 255, 128, 64],
        };
        // nk = 191: [191, 191 - 191, 191 - muldiv255(128, 191) = 95].
        assert_eq!(convert(Decoded::Cmyk(cmyk), 3).pixels, [191, 0, 95]);
    }
}
