//! Shards: the K-th of N contiguous slices of an audit's samples, so that a
//! scheduler's array tasks can each audit one and `merge` can combine them
//! into exactly the report one machine would have written.

use crate::data::Dataset;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// This shard's slice of `data` (the whole audited data, after
    /// `--samples`); a shard with no samples is an error.
    pub fn slice(&self, mut data: Dataset) -> Result<Dataset> {
        let total = data.len();
        let range = self.range(total);
        if range.is_empty() {
            return Err(Error::Usage(format!(
                "shard {self} has no samples: {total} samples do not make {} shards",
                self.count
            )));
        }
        let mut slice = data.split_off(range.start);
        slice.truncate(range.len());
        Ok(slice)
    }

    /// `K/N`; `auto` (Slurm job arrays: `SLURM_ARRAY_TASK_ID` with
    /// `SLURM_ARRAY_TASK_COUNT`, or `_MIN`/`_MAX`); `auto/N` (also
    /// Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`). `env` reads a
    /// variable (the process environment, or a test's).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let usage = |why: String| Error::Usage(format!("--shard {text}: {why}"));
        let number = |name: &str, value: &str| -> Result<usize> {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| usage(format!("{name} `{value}` is not a whole number")))
        };
        let variable = |name: &str| env(name).map(|v| number(name, &v)).transpose();
        // A Slurm task's index counts from the array's first id.
        let slurm_min = || Ok::<_, Error>(variable("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0));
        let slurm_index = |id: usize| -> Result<usize> {
            id.checked_sub(slurm_min()?)
                .ok_or_else(|| usage("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN".into()))
        };
        let shard = match text.split_once('/') {
            Some(("auto", n)) => {
                let count = number("the shard count", n)?;
                let index = match variable("SLURM_ARRAY_TASK_ID")? {
                    Some(id) => slurm_index(id)?,
                    None => variable("JOB_COMPLETION_INDEX")?.ok_or_else(|| usage(
                        "neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set; give the shard as K/N".into(),
                    ))?,
                };
                Shard { index, count }
            }
            Some((k, n)) => Shard {
                index: number("the shard index", k)?,
                count: number("the shard count", n)?,
            },
            None if text == "auto" => {
                let id = variable("SLURM_ARRAY_TASK_ID")?.ok_or_else(|| {
                    usage(
                        "SLURM_ARRAY_TASK_ID is not set (not a Slurm job array task); for a Kubernetes Indexed Job give the count: --shard auto/N".into(),
                    )
                })?;
                let count = match variable("SLURM_ARRAY_TASK_COUNT")? {
                    Some(count) => count,
                    None => match (env("SLURM_ARRAY_TASK_MIN"), variable("SLURM_ARRAY_TASK_MAX")?) {
                        (Some(_), Some(max)) => max.checked_sub(slurm_min()?).map(|d| d + 1).ok_or_else(|| {
                            usage("SLURM_ARRAY_TASK_MAX is below SLURM_ARRAY_TASK_MIN".into())
                        })?,
                        _ => return Err(usage("SLURM_ARRAY_TASK_COUNT (or _MIN and _MAX) is not set; give the count: --shard auto/N".into())),
                    },
                };
                Shard {
                    index: slurm_index(id)?,
                    count,
                }
            }
            None => return Err(usage("write K/N (e.g. 0/4), auto or auto/N".into())),
        };
        if shard.count == 0 || shard.index >= shard.count {
            return Err(usage(format!(
                "shard {} of {} does not exist: K runs from 0 to N-1",
                shard.index, shard.count
            )));
        }
        Ok(shard)
    }

    /// The positions of this shard's samples among `len`: contiguous, in
    /// order, sizes differing by at most one.
    pub fn range(&self, len: usize) -> Range<usize> {
        let cut = |k: usize| (len as u128 * k as u128 / self.count as u128) as usize;
        cut(self.index)..cut(self.index + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shards_tile_the_samples() {
        for count in [1, 2, 3, 7] {
            let mut next = 0;
            for index in 0..count {
                let r = Shard { index, count }.range(100);
                assert_eq!(r.start, next);
                assert!(r.len() == 100 / count || r.len() == 100 / count + 1);
                next = r.end;
            }
            assert_eq!(next, 100);
        }
        assert_eq!(Shard { index: 3, count: 7 }.range(5).len(), 0);
        assert_eq!(Shard { index: 6, count: 7 }.range(5).len(), 1);
    }

    #[test]
    fn schedulers_variables_and_errors() {
        let none = env(&[]);
        assert_eq!(
            Shard::parse("2/7", &none).unwrap(),
            Shard { index: 2, count: 7 }
        );
        assert!(Shard::parse("7/7", &none)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(Shard::parse("0/0", &none).is_err());
        assert!(Shard::parse("x/2", &none).is_err());
        assert!(Shard::parse("auto", &none)
            .unwrap_err()
            .to_string()
            .contains("SLURM_ARRAY_TASK_ID"));
        assert!(Shard::parse("auto/3", &none)
            .unwrap_err()
            .to_string()
            .contains("JOB_COMPLETION_INDEX"));
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
        ]);
        assert_eq!(
            Shard::parse("auto", &slurm).unwrap(),
            Shard { index: 2, count: 4 }
        );
        let min_max = env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
        ]);
        assert_eq!(
            Shard::parse("auto", &min_max).unwrap(),
            Shard { index: 1, count: 3 }
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "4")]);
        assert_eq!(
            Shard::parse("auto/5", &k8s).unwrap(),
            Shard { index: 4, count: 5 }
        );
        assert!(Shard::parse("auto/4", &k8s).is_err());
    }
}
