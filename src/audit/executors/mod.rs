//! One executor per kind of job: the clean pass, an attack, transferred
//! examples (crafted on a source, evaluated on the audited model) and
//! AutoAttack's cascade. Each runs its samples through
//! [`drive`](super::drive::drive) and returns verdicts; none touches a file
//! (the [`Recorder`](super::record::Recorder) writes), none decides what to
//! run (the [`Schedule`](super::plan::Schedule) does).

pub mod attack;
pub mod cascade;
pub mod clean;
pub mod transfer;

use super::drive::Drive;
use crate::attack::Attack;
use crate::data::Dataset;

/// What every executor needs: the audited samples and how to batch them.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub data: &'a Dataset,
    pub batch_size: usize,
    pub seed: u64,
}

impl Context<'_> {
    /// How to drive a step labelled `label` that runs `attack` (none: the
    /// clean images).
    pub fn drive<'s>(&self, label: &'s str, attack: Option<&dyn Attack>) -> Drive<'s> {
        Drive {
            label,
            batch_size: self.batch_size,
            seed: self.seed,
            budget: attack.map(|a| {
                let s = a.settings();
                (s.norm, s.eps)
            }),
        }
    }
}
