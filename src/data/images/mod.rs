//! Image collections as datasets: `imagefolder:DIR` and `images:LIST`,
//! decoded and preprocessed as torchvision does (`decode`, `resample`,
//! `transform`), read per batch rather than held as floats.
//!
//! A collection is listed when it is opened (cheap: names and labels);
//! [`ImageFiles::prepare`] then decodes every selected image once, in
//! parallel, to find the bad ones before anything runs, and keeps the
//! preprocessed bytes when they fit in a quarter of the memory ceiling
//! (a quarter of `UPAT_MAX_MEMORY`; bytes are 4× smaller than the floats
//! a model sees). Otherwise images are decoded again for every batch that
//! needs them, so 50,000 ImageNet images take no more memory than a batch;
//! `UPAT_DECODE_PER_BATCH=1` asks for that whatever the size.

pub mod decode;
pub mod listing;
pub mod resample;
pub mod transform;

use crate::error::{Error, Result};
use crate::limits;
use listing::Entry;
use resample::Image8;
use std::path::{Path, PathBuf};
use transform::{to_chw_floats, Transform};

/// What `--data imagefolder:`/`images:` needs besides the path.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub transform: Transform,
    /// `--classes FILE`: class names in index order.
    pub classes: Option<PathBuf>,
}

impl ImageOptions {
    /// The options from the command line's `--transform` text (default:
    /// `none`) and `--classes` file.
    pub fn new(transform: Option<&str>, classes: Option<PathBuf>) -> Result<Self> {
        Ok(ImageOptions {
            transform: transform.map(str::parse).transpose()?.unwrap_or_default(),
            classes,
        })
    }
}

/// The images of a dataset, one entry per sample, decoded on demand.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    entries: Vec<Entry>,
    transform: Transform,
    shape: [usize; 3],
    /// Preprocessed HWC bytes per sample, once [`prepare`](Self::prepare)
    /// found they fit.
    cache: Option<Vec<Vec<u8>>>,
}

/// A sample [`ImageFiles::prepare`] could not use.
#[derive(Debug, Clone)]
pub struct BadImage {
    pub id: u64,
    pub name: String,
    pub why: String,
}

impl ImageFiles {
    /// The images of `entries`; their common shape comes from the transform,
    /// or from the first readable image when the transform keeps sizes.
    pub fn new(entries: Vec<Entry>, transform: Transform, origin: &Path) -> Result<Self> {
        let shape = match transform.output_shape() {
            Some(shape) => shape,
            None => {
                let first = entries
                    .first()
                    .ok_or_else(|| Error::data(origin, "lists no image"))?;
                let image = load(first, &transform)
                    .map_err(|why| Error::data(origin, format!("image {}: {why}", first.name)))?;
                [transform.channels, image.height, image.width]
            }
        };
        Ok(ImageFiles {
            entries,
            transform,
            shape,
            cache: None,
        })
    }

    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Sample `i`'s listed name (its relative path).
    pub fn name(&self, i: usize) -> Option<&str> {
        self.entries.get(i).map(|e| e.name.as_str())
    }

    /// The listed name (relative path) of each sample.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn truncate(&mut self, n: usize) {
        self.entries.truncate(n);
        if let Some(cache) = &mut self.cache {
            cache.truncate(n);
        }
    }

    pub fn split_off(&mut self, at: usize) -> Self {
        ImageFiles {
            entries: self.entries.split_off(at),
            transform: self.transform.clone(),
            shape: self.shape,
            cache: self.cache.as_mut().map(|c| c.split_off(at)),
        }
    }

    /// Whether batches decode their images (no cache).
    pub fn decodes_on_demand(&self) -> bool {
        self.cache.is_none()
    }

    /// Appends the `ToTensor` floats of the samples at `positions`.
    pub fn gather(&self, positions: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let images = match &self.cache {
            Some(cache) => positions
                .iter()
                .map(|&i| Ok(self.as_image(cache[i].clone())))
                .collect::<Result<Vec<_>>>()?,
            None => parallel_map(positions, |&i| {
                self.read(i)
                    .map_err(|why| bad_image(&self.entries[i], &why))
            })?,
        };
        for image in &images {
            to_chw_floats(image, out);
        }
        Ok(())
    }

    fn as_image(&self, pixels: Vec<u8>) -> Image8 {
        Image8 {
            width: self.shape[2],
            height: self.shape[1],
            channels: self.shape[0],
            pixels,
        }
    }

    /// Decodes and preprocesses sample `i`, checking its shape.
    fn read(&self, i: usize) -> std::result::Result<Image8, String> {
        let image = load(&self.entries[i], &self.transform)?;
        if [image.channels, image.height, image.width] != self.shape {
            return Err(format!(
                    "comes out {}x{} where the first image came out {}x{}; give --transform with a crop \
                     or an exact resize (e.g. res256-crop224) so every image has one size",
                image.height, image.width, self.shape[1], self.shape[2]
            ));
        }
        Ok(image)
    }

    /// Decodes every sample once (in parallel): a bad one is an error naming
    /// its file, or with `skip_bad` is returned (by id) for the caller to
    /// drop. Keeps the preprocessed bytes when they fit in a quarter of the
    /// memory ceiling.
    pub fn prepare(&mut self, ids: &[u64], skip_bad: bool) -> Result<Vec<(usize, BadImage)>> {
        let per_image = limits::product(&self.shape).unwrap_or(usize::MAX);
        let total = per_image.saturating_mul(self.entries.len()) as u64;
        let keep = total <= limits::max_bytes()? / 4
            && std::env::var("UPAT_DECODE_PER_BATCH").map_or(true, |v| v != "1");
        let positions: Vec<usize> = (0..self.entries.len()).collect();
        let decoded: Vec<std::result::Result<Vec<u8>, String>> = parallel_map(&positions, |&i| {
            Ok(self
                .read(i)
                .map(|image| if keep { image.pixels } else { Vec::new() }))
        })?;
        let mut bad = Vec::new();
        let mut cache = Vec::with_capacity(if keep { decoded.len() } else { 0 });
        for (i, result) in decoded.into_iter().enumerate() {
            match result {
                Ok(pixels) => {
                    if keep {
                        cache.push(pixels);
                    }
                }
                Err(why) if skip_bad => bad.push((
                    i,
                    BadImage {
                        id: ids[i],
                        name: self.entries[i].name.clone(),
                        why,
                    },
                )),
                Err(why) => {
                    return Err(bad_image(
                        &self.entries[i],
                        &format!(
                        "{why} (--skip-bad-images skips such images and counts them in the report)"
                    ),
                    ))
                }
            }
        }
        // Positions of bad samples, highest first, so removals keep indices.
        for (i, _) in bad.iter().rev() {
            self.entries.remove(*i);
        }
        if keep {
            self.cache = Some(cache);
        }
        Ok(bad)
    }

    /// Hashes what decides the pixels: each file's bytes and name, and the
    /// transform.
    pub fn hash_into(&self, hasher: &mut sha2::Sha256) -> Result<()> {
        use sha2::Digest;
        hasher.update(self.transform.to_string().as_bytes());
        for entry in &self.entries {
            hasher.update(entry.name.as_bytes());
            hasher.update([0]);
            match &entry.path {
                Ok(path) => {
                    let (mut file, _) = limits::open_regular(path)?;
                    let mut chunk = vec![0u8; 1 << 16];
                    loop {
                        let n = std::io::Read::read(&mut file, &mut chunk)
                            .map_err(|e| Error::io(path, e))?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&chunk[..n]);
                    }
                }
                Err(why) => hasher.update(why.as_bytes()),
            }
        }
        Ok(())
    }
}

fn bad_image(entry: &Entry, why: &str) -> Error {
    Error::data(Path::new(&entry.name), format!("image {why}"))
}

/// Reads, decodes and preprocesses one listed image.
fn load(entry: &Entry, transform: &Transform) -> std::result::Result<Image8, String> {
    let path = entry.path.as_ref().map_err(|why| why.clone())?;
    let bytes = limits::read_regular(path).map_err(|e| e.to_string())?;
    let image = decode::decode(&bytes, transform.channels)?;
    Ok(transform.apply(image))
}

/// `f` over `items` on all cores, results in order; the first error wins.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    if workers <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(workers);
    let results: Vec<Result<Vec<R>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| scope.spawn(|| chunk.iter().map(&f).collect::<Result<Vec<R>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}
