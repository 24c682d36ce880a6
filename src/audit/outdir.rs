//! The report directory of an audit or a merge, claimed by one process at
//! a time: an advisory lock (`flock`) on a file inside it, which the
//! kernel releases when the process exits, however it exits. Two audits
//! started into one `--out` (three Slurm array tasks given the same
//! directory, say) would otherwise mix their files; the second is refused
//! while the first runs.
//!
//! A claimed directory's results (`report.csv` and the rest) are removed
//! before the run starts, so that a run that fails leaves no earlier
//! run's report beside its own incomplete `audit.json`.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file inside a claimed directory.
pub const LOCK_FILE: &str = ".upat-audit.lock";

/// A report directory this process holds.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    /// Holds the lock until dropped (or the process ends).
    _lock: File,
}

impl OutputDir {
    /// Creates `path` if missing and locks it, or says which process holds
    /// it.
    pub fn claim(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // A link planted under the lock's name is not followed.
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another upat-audit (process {holder})")
                };
                return Err(Error::Usage(format!(
                    "{} is in use by {holder}; give each audit its own --out \
                     (for a job array, e.g. --out report-$SLURM_ARRAY_TASK_ID), or wait for it to finish",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        // Who holds it, for the message above (advisory: the lock decides).
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| write!(lock, "{}", std::process::id()));
        Ok(OutputDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the results an earlier run left (never following a link:
    /// a link is removed, not what it points to).
    pub fn remove_results(&self) -> Result<()> {
        for name in crate::report::RESULT_FILES {
            let file = self.path.join(name);
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&file, e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_directory_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        let first = OutputDir::claim(&out).unwrap();
        let err = OutputDir::claim(&out).unwrap_err().to_string();
        assert!(
            err.contains("in use") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        OutputDir::claim(&out).unwrap();
    }

    #[test]
    fn earlier_results_are_removed_and_links_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        std::fs::create_dir(&out).unwrap();
        let elsewhere = dir.path().join("precious.csv");
        std::fs::write(&elsewhere, "keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("summary.csv")).unwrap();
        std::fs::write(out.join("report.csv"), "old").unwrap();
        std::fs::write(out.join("notes.txt"), "theirs").unwrap();
        let claimed = OutputDir::claim(&out).unwrap();
        claimed.remove_results().unwrap();
        assert!(!out.join("report.csv").exists());
        assert!(std::fs::symlink_metadata(out.join("summary.csv")).is_err());
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep");
        assert!(out.join("notes.txt").exists());
    }

    #[test]
    fn a_planted_lock_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        std::fs::create_dir(&out).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, out.join(LOCK_FILE)).unwrap();
        assert!(OutputDir::claim(&out).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
