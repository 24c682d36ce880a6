//! What a run trains, as a type the compiler checks: the command
//! (`pretrain`, `finetune`, `supervised`) and its method together, so an
//! impossible pair cannot be written down.
//!
//! A run's `config.json` keeps the two as strings (`"command": "finetune",
//! "method": "at"`), the form run directories have always had.

use serde::{Deserialize, Serialize};

/// The `upat-train` subcommand that trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pretrain,
    Finetune,
    Supervised,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pretrain => "pretrain",
            Command::Finetune => "finetune",
            Command::Supervised => "supervised",
        }
    }
}

/// What a run trains: every valid (command, method) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "MethodNames", try_from = "MethodNames")]
pub enum Method {
    /// `pretrain --method upat`: UPAT (paper Algorithm 1, Eq. 6).
    Upat,
    /// `pretrain --method simclr`: SimCLR, the paper's SimCLR-AT baseline.
    Simclr,
    /// `finetune --mode linear`: a linear head on the frozen encoder.
    Linear,
    /// `finetune --mode at`: the head trained on PGD examples.
    FinetuneAt,
    /// `finetune --mode trades-full`: the whole network with TRADES.
    TradesFull,
    /// `supervised --method ce`.
    Ce,
    /// `supervised --method at`: Madry et al.'s PGD adversarial training.
    At,
    /// `supervised --method trades`: TRADES (β = 6).
    Trades,
    /// `supervised --method alp`: adversarial logit pairing.
    Alp,
}

impl Method {
    pub const ALL: [Method; 9] = [
        Method::Upat,
        Method::Simclr,
        Method::Linear,
        Method::FinetuneAt,
        Method::TradesFull,
        Method::Ce,
        Method::At,
        Method::Trades,
        Method::Alp,
    ];

    pub fn command(self) -> Command {
        match self {
            Method::Upat | Method::Simclr => Command::Pretrain,
            Method::Linear | Method::FinetuneAt | Method::TradesFull => Command::Finetune,
            Method::Ce | Method::At | Method::Trades | Method::Alp => Command::Supervised,
        }
    }

    /// The method's name on the command line (`--method`, `--mode`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Upat => "upat",
            Method::Simclr => "simclr",
            Method::Linear => "linear",
            Method::FinetuneAt | Method::At => "at",
            Method::TradesFull => "trades-full",
            Method::Ce => "ce",
            Method::Trades => "trades",
            Method::Alp => "alp",
        }
    }

    /// The method `name` of `command`, if there is one.
    pub fn parse(command: &str, name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.command().as_str() == command && m.name() == name)
    }

    /// Whether the encoder's weights (and BatchNorm statistics) train: not
    /// when fine-tuning a head on a frozen encoder.
    pub fn trains_encoder(self) -> bool {
        self.command() != Command::Finetune || self == Method::TradesFull
    }

    /// Whether the run ends with a classifier to export (pre-training makes
    /// only an encoder).
    pub fn makes_classifier(self) -> bool {
        self.command() != Command::Pretrain
    }

    /// `command:method`, as in the exported model's `upat.method`.
    pub fn label(self) -> String {
        format!("{}:{}", self.command().as_str(), self.name())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.command().as_str(), self.name())
    }
}

/// How a [`Method`] is written in `config.json`.
#[derive(Serialize, Deserialize)]
struct MethodNames {
    command: String,
    method: String,
}

impl From<Method> for MethodNames {
    fn from(m: Method) -> Self {
        MethodNames {
            command: m.command().as_str().into(),
            method: m.name().into(),
        }
    }
}

impl TryFrom<MethodNames> for Method {
    type Error = String;

    fn try_from(names: MethodNames) -> Result<Self, String> {
        Method::parse(&names.command, &names.method).ok_or_else(|| {
            let valid: Vec<String> = Method::ALL.iter().map(|m| m.to_string()).collect();
            format!(
                "`{} --method {}` is not a training method; valid: {}",
                names.command,
                names.method,
                valid.join(", ")
            )
        })
    }
}

/// `pretrain --method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PretrainMethod {
    Upat,
    Simclr,
}

impl From<PretrainMethod> for Method {
    fn from(m: PretrainMethod) -> Method {
        match m {
            PretrainMethod::Upat => Method::Upat,
            PretrainMethod::Simclr => Method::Simclr,
        }
    }
}

/// `finetune --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FinetuneMode {
    Linear,
    At,
    TradesFull,
}

impl From<FinetuneMode> for Method {
    fn from(m: FinetuneMode) -> Method {
        match m {
            FinetuneMode::Linear => Method::Linear,
            FinetuneMode::At => Method::FinetuneAt,
            FinetuneMode::TradesFull => Method::TradesFull,
        }
    }
}

/// `supervised --method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SupervisedMethod {
    Ce,
    At,
    Trades,
    Alp,
}

impl From<SupervisedMethod> for Method {
    fn from(m: SupervisedMethod) -> Method {
        match m {
            SupervisedMethod::Ce => Method::Ce,
            SupervisedMethod::At => Method::At,
            SupervisedMethod::Trades => Method::Trades,
            SupervisedMethod::Alp => Method::Alp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_through_its_names() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.command().as_str(), m.name()), Some(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m);
        }
        assert_eq!(
            serde_json::to_string(&Method::FinetuneAt).unwrap(),
            r#"{"command":"finetune","method":"at"}"#
        );
        let err = serde_json::from_str::<Method>(r#"{"command":"pretrain","method":"at"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pretrain --method at"), "{err}");
    }

    #[test]
    fn cli_names_match_the_methods() {
        use clap::ValueEnum;
        for (value, method) in PretrainMethod::value_variants()
            .iter()
            .map(|v| (v.to_possible_value().unwrap(), Method::from(*v)))
            .chain(
                FinetuneMode::value_variants()
                    .iter()
                    .map(|v| (v.to_possible_value().unwrap(), Method::from(*v))),
            )
            .chain(
                SupervisedMethod::value_variants()
                    .iter()
                    .map(|v| (v.to_possible_value().unwrap(), Method::from(*v))),
            )
        {
            assert_eq!(value.get_name(), method.name());
        }
    }
}
