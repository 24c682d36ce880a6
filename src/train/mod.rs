//! Training with libtorch (feature `train`): the network and, as they land,
//! UPAT and SimCLR pre-training, fine-tuning and supervised baselines
//! (DESIGN §5). `export` turns a trained network into the ONNX file
//! `upat-audit` reads.

pub mod adversary;
pub mod augment;
pub mod command;
pub mod export;
pub mod instance_attack;
pub mod losses;
pub mod method;
pub mod model;
pub mod run;
pub mod sgd;
pub mod trainer;
