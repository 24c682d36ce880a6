//! Integration tests: the library on real model files, and the CLIs as a
//! user runs them. Fixtures come from `tests/fixtures/generate.py` and
//! `models/fmnist_cnn.py`.

mod adjoint;
mod attacks;
mod backends;
mod ci;
mod cli;
mod coverage;
#[cfg(feature = "train")]
mod export;
mod external;
mod flags;
mod grad;
mod hostile;
mod images;
mod layout;
mod outcomes;
mod resume;
mod shard;
mod slurm;
#[cfg(feature = "train")]
mod train;
mod util;
// The timm zoo runs once per scripts/test.sh, in the audit-only build: the
// gradient graph is the same in both builds, and the zoo takes minutes.
#[cfg(not(feature = "train"))]
mod zoo;
