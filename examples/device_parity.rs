//! The training step on the CPU and on a CUDA device, from the same weights
//! and the same images: forward, gradients, one SGD step and the attack
//! compared value by value; the augmentations' statistics; and short SimCLR
//! and UPAT runs side by side. A training run that learns on one device and
//! not on the other shows up here op by op.
//!
//!     cargo build --example device_parity
//!     target/debug/examples/device_parity fashion-mnist[:DIR] [STEPS]

use tch::{nn, Device, Kind, Tensor};
use upat::data::{DataSpec, Dataset, Split};
use upat::train::adversary::linf_ascent;
use upat::train::augment::Augmentations;
use upat::train::instance_attack::AttackLoss;
use upat::train::losses::nt_xent;
use upat::train::method::Method;
use upat::train::model::{HeadFeatures, InputNormalization, Network};
use upat::train::run::{AttackView, RunConfig};
use upat::train::sgd::Sgd;
use upat::train::trainer::batch_loss;

const BATCH: usize = 64;

fn config(method: Method, data: &Dataset) -> RunConfig {
    let [c, h, w] = data.image_shape.map(|d| d as i64);
    RunConfig {
        method,
        data: "parity".into(),
        transform: None,
        arch: "resnet18".into(),
        width: 8,
        epochs: 1,
        batch_size: BATCH,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-3,
        seed: 0,
        samples: None,
        holdout: 0,
        eps: 0.1,
        alpha: 0.025,
        steps: 5,
        lambda: 1.0 / 256.0,
        tau: 0.5,
        attack_view: AttackView::TPrime,
        attack_loss: AttackLoss::Contrastive,
        features: HeadFeatures::Projector,
        standardized_features: false,
        encoder: None,
        image_shape: [c, h, w],
        classes: 10,
        normalization: InputNormalization {
            mean: vec![0.2849; c as usize],
            std: vec![0.3540; c as usize],
        },
    }
}

/// Network initialised on the CPU (seeded), then moved to `device`.
fn network(config: &RunConfig, device: Device) -> (nn::VarStore, Network) {
    network_initialised_on(config, Device::Cpu, device)
}

/// Network initialised on `init` (seeded; as upat-train does on its
/// device), then moved to `device`.
fn network_initialised_on(
    config: &RunConfig,
    init: Device,
    device: Device,
) -> (nn::VarStore, Network) {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(init);
    let net = Network::new(
        &vs.root(),
        config.image_shape[0],
        config.width,
        10,
        HeadFeatures::Projector,
        config.normalization.clone(),
    );
    vs.set_device(device);
    (vs, net)
}

fn images(data: &Dataset, batch: usize, device: Device) -> Tensor {
    let [c, h, w] = data.image_shape.map(|d| d as i64);
    let range = batch * BATCH..(batch + 1) * BATCH;
    Tensor::from_slice(&data.pixels_of(range).expect("in-memory pixels"))
        .view([BATCH as i64, c, h, w])
        .to_device(device)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let b = b.to_device(a.device());
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    (a - b).abs().max().double_value(&[]) / scale
}

fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec: DataSpec = args
        .first()
        .map(String::as_str)
        .unwrap_or("fashion-mnist")
        .parse()?;
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let data = spec.load(Split::Train)?;
    // Without a GPU it compares the CPU with itself (a check of this program).
    let cuda = Device::cuda_if_available();
    println!("devices: Cpu and {cuda:?}");
    let simclr = config(Method::Simclr, &data);

    println!("== parity from the same weights, same images");
    let (cpu_vs, cpu_net) = network(&simclr, Device::Cpu);
    let (gpu_vs, gpu_net) = network(&simclr, cuda);
    let (x_cpu, x_gpu) = (images(&data, 0, Device::Cpu), images(&data, 0, cuda));
    for train in [false, true] {
        let a = tch::no_grad(|| cpu_net.project_t(&x_cpu, train));
        let b = tch::no_grad(|| gpu_net.project_t(&x_gpu, train));
        println!(
            "projection (train={train}): relative difference {:.2e}",
            max_diff(&a, &b)
        );
    }
    let loss_of = |net: &Network, x: &Tensor| {
        nt_xent(
            &net.project_t(x, true),
            &net.project_t(&x.flip([3]), true),
            0.5,
        )
    };
    let mut cpu_sgd = Sgd::new(&cpu_vs, 0.1, 0.9, 1e-3);
    let mut gpu_sgd = Sgd::new(&gpu_vs, 0.1, 0.9, 1e-3);
    let (la, lb) = (loss_of(&cpu_net, &x_cpu), loss_of(&gpu_net, &x_gpu));
    println!(
        "loss: cpu {:.6} cuda {:.6}",
        la.double_value(&[]),
        lb.double_value(&[])
    );
    cpu_sgd.zero_grad();
    gpu_sgd.zero_grad();
    la.backward();
    lb.backward();
    let mut worst_grad = (0.0, String::new());
    for ((name, a), (_, b)) in sorted_variables(&cpu_vs)
        .iter()
        .zip(sorted_variables(&gpu_vs).iter())
    {
        if a.requires_grad() {
            let (ga, gb) = (a.grad(), b.grad());
            if !ga.defined() || !gb.defined() {
                println!(
                    "{name}: gradient defined cpu {} cuda {}",
                    ga.defined(),
                    gb.defined()
                );
                continue;
            }
            let d = max_diff(&ga, &gb);
            if d > worst_grad.0 {
                worst_grad = (d, name.clone());
            }
        }
    }
    println!(
        "parameter gradients: worst relative difference {:.2e} ({})",
        worst_grad.0, worst_grad.1
    );
    let before: Vec<Tensor> = sorted_variables(&gpu_vs)
        .iter()
        .map(|(_, t)| t.copy())
        .collect();
    cpu_sgd.step();
    gpu_sgd.step();
    let mut moved = 0.0f64;
    let mut worst_step = (0.0, String::new());
    for (((name, a), (_, b)), old) in sorted_variables(&cpu_vs)
        .iter()
        .zip(sorted_variables(&gpu_vs).iter())
        .zip(&before)
    {
        moved = moved.max((b - old).abs().max().double_value(&[]));
        let d = max_diff(a, b);
        if d > worst_step.0 {
            worst_step = (d, name.clone());
        }
    }
    println!("after one SGD step: largest CUDA parameter change {moved:.2e}, worst cpu/cuda difference {:.2e} ({})", worst_step.0, worst_step.1);

    let target_cpu = tch::no_grad(|| cpu_net.project_t(&x_cpu.flip([3]), true));
    let target_gpu = target_cpu.to_device(cuda);
    fn objective<'a>(net: &'a Network, target: &'a Tensor) -> impl Fn(&Tensor) -> Tensor + 'a {
        move |xg: &Tensor| nt_xent(&net.project_t(xg, false), target, 0.5)
    }
    let adv_cpu = linf_ascent(
        &x_cpu,
        x_cpu.shallow_clone(),
        0.1,
        0.025,
        5,
        objective(&cpu_net, &target_cpu),
    );
    let adv_gpu = linf_ascent(
        &x_gpu,
        x_gpu.shallow_clone(),
        0.1,
        0.025,
        5,
        objective(&gpu_net, &target_gpu),
    );
    let agree = adv_cpu
        .eq_tensor(&adv_gpu.to_device(Device::Cpu))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    let linf = |adv: &Tensor, x: &Tensor| (adv - x).abs().max().double_value(&[]);
    println!(
        "attack: pixels equal {:.3}; ||adv - x||inf cpu {:.3} cuda {:.3}; metric cpu {:.4} cuda {:.4}",
        agree,
        linf(&adv_cpu, &x_cpu),
        linf(&adv_gpu, &x_gpu),
        tch::no_grad(|| objective(&cpu_net, &target_cpu)(&adv_cpu)).double_value(&[]),
        tch::no_grad(|| objective(&gpu_net, &target_gpu)(&adv_gpu)).double_value(&[]),
    );

    println!("== augmentations");
    let augment = Augmentations::default();
    for (device, x) in [(Device::Cpu, &x_cpu), (cuda, &x_gpu)] {
        tch::manual_seed(1);
        let v = augment.view(x);
        let change = (&v - x).abs().mean(Kind::Float).double_value(&[]);
        let spread = v
            .std_dim([0i64].as_slice(), true, false)
            .mean(Kind::Float)
            .double_value(&[]);
        println!(
            "{device:?}: mean |view - x| {change:.4}, spread across the batch {spread:.4}, view mean {:.4}, finite {}",
            v.mean(Kind::Float).double_value(&[]),
            v.isfinite().all().int64_value(&[]) == 1
        );
    }

    println!("== {steps} training steps from the same weights on the same batches");
    for method in [Method::Simclr, Method::Upat] {
        let config = config(method, &data);
        for (init, device) in [
            (Device::Cpu, Device::Cpu),
            (Device::Cpu, cuda),
            (cuda, cuda),
        ] {
            let (vs, net) = network_initialised_on(&config, init, device);
            let mut sgd = Sgd::new(&vs, config.lr, config.momentum, config.weight_decay);
            let mut losses = Vec::new();
            tch::manual_seed(2);
            for step in 0..steps {
                let x = images(&data, step % (data.len() / BATCH), device);
                let y = Tensor::zeros([BATCH as i64], (Kind::Int64, device));
                let loss = batch_loss(&config, &net, &augment, &x, &y)?;
                losses.push(loss.double_value(&[]));
                sgd.zero_grad();
                loss.backward();
                sgd.step();
            }
            let show: Vec<String> = losses
                .iter()
                .step_by((steps / 6).max(1))
                .map(|l| format!("{l:.3}"))
                .collect();
            println!(
                "{:7} initialised on {init:?}, trained on {device:?}: loss {}",
                method.label(),
                show.join(" ")
            );
        }
    }
    Ok(())
}
