//! Attack specifications and suites.
//!
//! A suite (TOML, see `docs/suite-format.md`) lists attacks by id; each entry
//! becomes an [`AttackSpec`]. The attacks themselves are added one file per
//! attack family as they land; [`AttackKind::is_available`] says which run in
//! this build, so a suite that names one that does not is refused up front
//! instead of producing a report that silently lacks it.

pub mod pgd;
pub mod project;
pub mod rng;
pub mod suite;
pub mod transfer;

pub use pgd::{Perturbed, Pgd};
pub use suite::{builtin_suite, AttackSpec, Suite, BUILTIN_SUITES};

/// The attack families a suite may name (`kind = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttackKind {
    /// No perturbation: clean accuracy.
    Clean,
    Fgsm,
    Pgd,
    ApgdCe,
    ApgdT,
    FabT,
    Square,
    Transfer,
}

impl AttackKind {
    pub const ALL: [AttackKind; 8] = [
        AttackKind::Clean,
        AttackKind::Fgsm,
        AttackKind::Pgd,
        AttackKind::ApgdCe,
        AttackKind::ApgdT,
        AttackKind::FabT,
        AttackKind::Square,
        AttackKind::Transfer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::Clean => "clean",
            AttackKind::Fgsm => "fgsm",
            AttackKind::Pgd => "pgd",
            AttackKind::ApgdCe => "apgd-ce",
            AttackKind::ApgdT => "apgd-t",
            AttackKind::FabT => "fab-t",
            AttackKind::Square => "square",
            AttackKind::Transfer => "transfer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether this build can run the attack.
    pub fn is_available(self) -> bool {
        matches!(
            self,
            AttackKind::Clean | AttackKind::Fgsm | AttackKind::Pgd | AttackKind::Transfer
        )
    }

    /// Whether the attack perturbs inputs (and so has a norm and budget).
    pub fn perturbs(self) -> bool {
        self != AttackKind::Clean
    }
}

/// The threat model's norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Linf,
    L2,
    L1,
}

impl Norm {
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
            Norm::L1 => "l1",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Norm::Linf, Norm::L2, Norm::L1]
            .into_iter()
            .find(|n| n.as_str() == s)
    }
}

/// The objective an attack maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Cross-entropy.
    Ce,
    /// Carlini–Wagner margin: max_{j≠y} z_j − z_y.
    Margin,
    /// Difference of logits ratio (Croce & Hein 2020).
    Dlr,
    DlrTargeted,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Ce => "ce",
            Loss::Margin => "margin",
            Loss::Dlr => "dlr",
            Loss::DlrTargeted => "dlr-targeted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Loss::Ce, Loss::Margin, Loss::Dlr, Loss::DlrTargeted]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}
