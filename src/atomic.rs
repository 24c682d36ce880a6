//! Atomic file writes: a reader sees the old file or the complete new one,
//! never a half-written one (reports, checkpoints, journals).
//!
//! The directory written to may be shared with someone hostile (a CI
//! workspace, a group-writable run directory), so nothing here follows a
//! link planted there: the temporary file is created exclusively
//! (`O_CREAT|O_EXCL`, which fails on any existing name, a dangling link
//! included) under an unpredictable name, and the final `rename` replaces a
//! link at the destination instead of writing through it. Temporaries a
//! killed run left behind are removed on the next write of the same file.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a new temporary file beside `path`, syncs it, then
/// renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    remove_stale_temporaries(dir, &name);
    let (tmp, mut file) = create_exclusive(dir, &name).map_err(|e| Error::io(path, e))?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Like [`write_atomic`] for writers that want a path of their own (a
/// library that saves tensors to a file, say): `write` creates and fills a
/// file in a fresh private directory (mode 0700, so nobody else can plant a
/// link in it), which is then synced and renamed over `path`.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let (dir, name) = split(path)?;
    remove_stale_temporaries(dir, &name);
    let private = create_private_dir(dir, &name).map_err(|e| Error::io(path, e))?;
    let tmp = private.join(&name);
    let result = write(&tmp)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    let _ = std::fs::remove_dir_all(&private);
    result.map_err(|e| Error::io(path, e))
}

fn split(path: &Path) -> Result<(&Path, OsString)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} is not a file path", path.display())))?;
    Ok((dir, name.to_os_string()))
}

/// `.<name>.tmp-`: every temporary of `name` starts so.
fn temporary_prefix(name: &OsString) -> String {
    format!(".{}.tmp-", name.to_string_lossy())
}

/// 64 bits the OS seeded (std's hash keys), different on every call.
fn unpredictable() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn temporary_name(dir: &Path, name: &OsString) -> PathBuf {
    dir.join(format!(
        "{}{:016x}",
        temporary_prefix(name),
        unpredictable()
    ))
}

fn create_exclusive(dir: &Path, name: &OsString) -> std::io::Result<(PathBuf, std::fs::File)> {
    loop {
        let tmp = temporary_name(dir, name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn create_private_dir(dir: &Path, name: &OsString) -> std::io::Result<PathBuf> {
    loop {
        let tmp = temporary_name(dir, name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the temporaries of `name` a killed run left in `dir`: our own
/// files and private directories only; a link is removed, never followed.
fn remove_stale_temporaries(dir: &Path, name: &OsString) {
    let prefix = temporary_prefix(name);
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    for item in listing.flatten() {
        let is_ours = item.file_name().to_str().is_some_and(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if !is_ours {
            continue;
        }
        let path = item.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&path);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/r.csv"), b"x").is_err());
        write_atomic_with(&path, |tmp| std::fs::write(tmp, b"by a library")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"by a library");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn planted_links_are_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // A link at the destination, and links at every name the old
        // scheme (`.<name>.tmp-<pid>`) would have used.
        let path = dir.path().join("report.csv");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        std::os::unix::fs::symlink(
            &victim,
            dir.path()
                .join(format!(".report.csv.tmp-{}", std::process::id())),
        )
        .unwrap();
        write_atomic(&path, b"report").unwrap();
        write_atomic_with(&path, |tmp| std::fs::write(tmp, b"report 2")).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"report 2");
    }

    #[test]
    fn temporaries_of_a_killed_run_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let stale_file = dir.path().join(".r.csv.tmp-0123456789abcdef");
        let stale_dir = dir.path().join(".r.csv.tmp-fedcba9876543210");
        let unrelated = dir.path().join(".r.csv.tmp-notours");
        std::fs::write(&stale_file, b"half").unwrap();
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(&unrelated, b"keep").unwrap();
        write_atomic(&dir.path().join("r.csv"), b"whole").unwrap();
        assert!(!stale_file.exists() && !stale_dir.exists());
        assert!(unrelated.exists());
    }
}
