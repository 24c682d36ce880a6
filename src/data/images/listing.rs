//! Which files make up an image collection, in which order, with which
//! labels: torchvision's `ImageFolder` convention, or a list file.
//!
//! Entries that must not be read (a symbolic link out of the collection's
//! folder, a path with `..`) are kept in the listing with the reason, so
//! positions (sample ids) do not depend on them, and refused when read:
//! an error naming the file, or a skipped sample with `--skip-bad-images`.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// torchvision's `IMG_EXTENSIONS`: the files `ImageFolder` lists (upat
/// decodes JPEG and PNG and names the others' format when reading them).
const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// The most entries a collection may list (a bound on the listing's memory).
const MAX_ENTRIES: usize = 20_000_000;

/// One listed image.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path relative to the collection's folder, for messages and reports.
    pub name: String,
    /// The file to read, or why it must not be read.
    pub path: std::result::Result<PathBuf, String>,
    pub label: i64,
}

/// A collection's images in sample order and its class names.
#[derive(Debug)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub classes: Vec<String>,
}

/// Class names from a `--classes` file: one per line, in index order.
pub fn read_classes(path: &Path) -> Result<Vec<String>> {
    let text = String::from_utf8(crate::limits::read_regular(path)?)
        .map_err(|_| Error::data(path, "is not UTF-8 text; give one class name per line"))?;
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let mut seen = HashSet::new();
    if let Some(dup) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(Error::data(path, format!("names class `{dup}` twice")));
    }
    if classes.is_empty() {
        return Err(Error::data(
            path,
            "names no class; give one class name per line",
        ));
    }
    Ok(classes)
}

fn canonical_dir(dir: &Path) -> Result<PathBuf> {
    let canonical = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if !canonical.is_dir() {
        return Err(Error::data(dir, "is not a directory"));
    }
    Ok(canonical)
}

/// Where `path` leads, if it stays inside `root` (both canonical but `path`).
fn inside(root: &Path, path: &Path) -> std::result::Result<PathBuf, String> {
    match path.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(real),
        Ok(real) => Err(format!(
            "leads out of {} (to {}): refused; copy the file into the folder",
            root.display(),
            real.display()
        )),
        Err(e) => Err(format!("cannot be resolved: {e}")),
    }
}

fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// torchvision's `ImageFolder`: one subfolder per class, classes sorted by
/// name; within a class, `sorted(os.walk(class_dir))`: folders in the order
/// of their path strings, files sorted within each.
pub fn image_folder(dir: &Path, classes: Option<Vec<String>>) -> Result<Listing> {
    let root = canonical_dir(dir)?;
    let mut found: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
        let entry = entry.map_err(|e| Error::io(&root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            found.push(name);
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(Error::data(
            dir,
            "has no class subfolders; imagefolder:DIR expects DIR/CLASS/IMAGE files (torchvision's ImageFolder)",
        ));
    }
    let classes = match classes {
        None => found.clone(),
        Some(pinned) => {
            if let Some(extra) = found.iter().find(|f| !pinned.contains(f)) {
                return Err(Error::data(
                    dir,
                    format!("has a class folder `{extra}` that the --classes file does not name"),
                ));
            }
            pinned
        }
    };
    let mut entries = Vec::new();
    for name in &found {
        let label = classes.iter().position(|c| c == name).unwrap_or(0) as i64;
        let class_dir = root.join(name);
        let class_root = match inside(&root, &class_dir) {
            Ok(real) => real,
            Err(why) => return Err(Error::data(&class_dir, format!("class folder {why}"))),
        };
        let before = entries.len();
        walk_class(&root, &class_root, name, label, &mut entries)?;
        if entries.len() == before {
            return Err(Error::data(
                &class_dir,
                "has no image files (torchvision refuses an empty class too); remove the folder or add images",
            ));
        }
    }
    Ok(Listing { entries, classes })
}

fn walk_class(
    root: &Path,
    class_root: &Path,
    class: &str,
    label: i64,
    entries: &mut Vec<Entry>,
) -> Result<()> {
    // Every folder under the class (following links that stay inside the
    // collection, once each), keyed by the path string os.walk would give.
    let mut folders: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(class.to_string(), class_root.to_path_buf())];
    while let Some((shown, real)) = stack.pop() {
        if !seen.insert(real.clone()) {
            continue;
        }
        for entry in std::fs::read_dir(&real).map_err(|e| Error::io(&real, e))? {
            let entry = entry.map_err(|e| Error::io(&real, e))?;
            let path = entry.path();
            if path.is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let shown_child = format!("{shown}/{name}");
                match inside(root, &path) {
                    Ok(real_child) => stack.push((shown_child, real_child)),
                    Err(why) => return Err(Error::data(&path, format!("folder {why}"))),
                }
            }
        }
        folders.insert(shown, real);
    }
    for (shown, real) in folders {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(|e| Error::io(&real, e))? {
            let entry = entry.map_err(|e| Error::io(&real, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_image_name(&name) && !entry.path().is_dir() {
                files.push((name, entry.path()));
            }
        }
        files.sort();
        for (name, path) in files {
            if entries.len() >= MAX_ENTRIES {
                return Err(Error::data(
                    root,
                    format!("lists more than {MAX_ENTRIES} images"),
                ));
            }
            entries.push(Entry {
                name: format!("{shown}/{name}"),
                path: inside(root, &path),
                label,
            });
        }
    }
    Ok(())
}

/// A list file: one image per line, `path,label` or `path<TAB>label`
/// (a `path,label` header line is allowed), or just `path`, whose first
/// folder is then its class. Labels are class indices or class names;
/// names are numbered by `--classes`, else in sorted order. Paths are
/// relative to the list's folder and may not leave it.
pub fn image_list(list: &Path, classes: Option<Vec<String>>) -> Result<Listing> {
    let text = String::from_utf8(crate::limits::read_regular(list)?)
        .map_err(|_| Error::data(list, "is not UTF-8 text; write one `path,label` per line"))?;
    let folder = list
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root = canonical_dir(folder)?;
    let mut rows: Vec<(usize, String, String)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, label) = if line.contains('\t') {
            line.rsplit_once('\t').unwrap_or((line, ""))
        } else {
            line.rsplit_once(',').unwrap_or((line, ""))
        };
        let (path, label) = (path.trim(), label.trim());
        if rows.is_empty() && path.eq_ignore_ascii_case("path") {
            continue;
        }
        let label = if label.is_empty() {
            match Path::new(path).components().next() {
                Some(Component::Normal(first)) if Path::new(path).components().count() > 1 => {
                    first.to_string_lossy().into_owned()
                }
                _ => {
                    return Err(Error::data(
                        list,
                        format!(
                        "line {}: `{path}` has no label and no class folder; write `path,label`",
                        number + 1
                    ),
                    ))
                }
            }
        } else {
            label.to_string()
        };
        if rows.len() >= MAX_ENTRIES {
            return Err(Error::data(
                list,
                format!("lists more than {MAX_ENTRIES} images"),
            ));
        }
        rows.push((number + 1, path.to_string(), label));
    }
    if rows.is_empty() {
        return Err(Error::data(
            list,
            "lists no image; write one `path,label` per line",
        ));
    }
    let numeric = rows.iter().all(|(_, _, l)| l.parse::<u32>().is_ok());
    let classes = match (classes, numeric) {
        (Some(c), _) => c,
        (None, true) => {
            let max = rows
                .iter()
                .map(|(_, _, l)| l.parse::<u32>().unwrap_or(0))
                .max()
                .unwrap_or(0);
            (0..=max).map(|i| i.to_string()).collect()
        }
        (None, false) => {
            let mut names: Vec<String> = rows.iter().map(|(_, _, l)| l.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    let mut entries = Vec::with_capacity(rows.len());
    for (number, path, label) in rows {
        let index = match label.parse::<usize>() {
            Ok(i) if numeric && i < classes.len() => i,
            Ok(i) if numeric => {
                return Err(Error::data(
                    list,
                    format!(
                        "line {number}: label {i} is outside the {} classes",
                        classes.len()
                    ),
                ))
            }
            _ => classes.iter().position(|c| *c == label).ok_or_else(|| {
                Error::data(
                    list,
                    format!("line {number}: class `{label}` is not among the classes (--classes)"),
                )
            })?,
        };
        let relative = Path::new(&path);
        let resolved = if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            Err("is absolute or has `..`: list paths are relative to the list's folder and stay in it".into())
        } else {
            inside(&root, &root.join(relative))
        };
        entries.push(Entry {
            name: path,
            path: resolved,
            label: index as i64,
        });
    }
    Ok(Listing { entries, classes })
}
