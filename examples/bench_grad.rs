//! Loss + input-gradient throughput of a model's gradient graph.
//!
//! `cargo run --example bench_grad -- MODEL.onnx C,H,W BATCH ITERATIONS [ort|tract]`
//! prints `images_per_second=<value>`; scripts/bench/grad_throughput.py runs
//! it next to the PyTorch reference and prints the ratio. With
//! `UPAT_BENCH_DUMP=FILE` it also writes the gradient graph ONNX Runtime runs
//! with standard ops only (upat's own kernels need upat's session).

use std::time::Instant;
use upat::attack::Loss;
use upat::onnx::{grad, ClassifierGraph, OnnxModel};
use upat::runtime::{BackendChoice, Device, GradientModel, RuntimeOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: bench_grad MODEL.onnx C,H,W BATCH ITERATIONS [ort|tract]"
    );
    let dims: Vec<usize> = args[1]
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let image_shape = [dims[0], dims[1], dims[2]];
    let (batch, iterations): (usize, usize) = (args[2].parse()?, args[3].parse()?);
    let backend = match args.get(4).map(String::as_str) {
        Some("tract") => BackendChoice::Tract,
        _ => BackendChoice::Ort,
    };
    let model = OnnxModel::load(std::path::Path::new(&args[0]))?;
    let graph = ClassifierGraph::prepare(&model, None, None, None)?;
    let gradient = grad::build(&graph, image_shape, Loss::Ce)?;
    // The graph ONNX Runtime runs, for a per-op profile in Python.
    if let Ok(path) = std::env::var("UPAT_BENCH_DUMP") {
        let proto =
            grad::specialise::for_onnx_runtime(&gradient, grad::specialise::Kernels::Standard);
        std::fs::write(path, prost::Message::encode_to_vec(&proto))?;
    }
    let mut session = GradientModel::open(
        &gradient,
        image_shape,
        RuntimeOptions {
            backend,
            device: Device::Cpu,
            // The reference's thread count, where the benchmark sets it.
            threads: std::env::var("UPAT_BENCH_THREADS")
                .ok()
                .and_then(|t| t.parse().ok()),
        },
    )?;
    let images: Vec<f32> = (0..batch * dims.iter().product::<usize>())
        .map(|i| (i % 251) as f32 / 251.0)
        .collect();
    let labels: Vec<i64> = (0..batch as i64)
        .map(|i| i % gradient.classes as i64)
        .collect();
    session.loss_and_grad(&images, &labels, None, batch)?; // warm-up
    let started = Instant::now();
    for _ in 0..iterations {
        session.loss_and_grad(&images, &labels, None, batch)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "images_per_second={}",
        (batch * iterations) as f64 / seconds
    );
    Ok(())
}
