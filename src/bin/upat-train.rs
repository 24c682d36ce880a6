//! `upat-train`: training with libtorch. This build provides `info`, which
//! reports the libtorch it runs against (threads, CUDA) — the check that the
//! binary finds libtorch without LD_LIBRARY_PATH.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "upat-train",
    version,
    about = "Train robust image classifiers with libtorch and export them to ONNX"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the libtorch this binary runs against: threads and CUDA devices.
    Info,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => {
            println!("libtorch threads: {}", tch::get_num_threads());
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            let probe = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0])
                .sum(tch::Kind::Float)
                .double_value(&[]);
            println!("tensor check: sum([1,2,3]) = {probe}");
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
