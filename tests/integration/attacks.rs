//! Attack invariants (DESIGN §3) on both backends, and attack strength.

use crate::util::{cpu, fashion_mnist_dir, fixture, repo_path, BACKENDS};
use upat::attack::project::norm_of;
use upat::attack::{AttackKind, AttackSpec, Loss, Norm, Pgd};
use upat::data::{load_npz, DataSpec, Dataset, Split};
use upat::onnx::{grad, ClassifierGraph, OnnxModel};
use upat::runtime::{BackendChoice, GradientModel};

fn spec(
    kind: AttackKind,
    norm: Norm,
    eps: f32,
    steps: u32,
    step_size: f32,
    restarts: u32,
    loss: Loss,
) -> AttackSpec {
    AttackSpec {
        id: format!("{}-{}-{eps}", kind.as_str(), norm.as_str()),
        kind,
        norm,
        eps,
        steps,
        step_size,
        restarts,
        random_start: kind != AttackKind::Fgsm,
        loss,
        queries: None,
        targets: None,
        min_robust_acc: None,
    }
}

fn gradient_model(
    model: &str,
    loss: Loss,
    image_shape: [usize; 3],
    backend: BackendChoice,
) -> GradientModel {
    let model = OnnxModel::load(&repo_path(model)).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    GradientModel::open(
        &grad::build(&graph, image_shape, loss).unwrap(),
        image_shape,
        cpu(backend),
    )
    .unwrap()
}

/// The attacks of the invariant tests: every norm, FGSM and PGD with restarts, every loss.
fn invariant_attacks() -> Vec<AttackSpec> {
    vec![
        spec(AttackKind::Fgsm, Norm::Linf, 0.05, 1, 0.05, 1, Loss::Ce),
        spec(AttackKind::Pgd, Norm::Linf, 0.03, 5, 0.01, 2, Loss::Ce),
        spec(AttackKind::Pgd, Norm::Linf, 0.03, 5, 0.01, 1, Loss::Margin),
        spec(AttackKind::Pgd, Norm::Linf, 0.03, 5, 0.01, 1, Loss::Dlr),
        spec(AttackKind::Pgd, Norm::L2, 0.3, 5, 0.1, 2, Loss::Ce),
        spec(AttackKind::Pgd, Norm::L1, 2.0, 8, 0.5, 2, Loss::Ce),
    ]
}

#[test]
fn every_attack_keeps_the_invariants_on_both_backends() {
    let data = load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    let original = data.pixels.clone();
    let ids: Vec<u64> = (0..data.len() as u64).collect();
    let len = data.image_len();
    for backend in BACKENDS {
        for attack in invariant_attacks() {
            let mut model = gradient_model(
                "tests/fixtures/tiny_cnn.onnx",
                attack.loss,
                data.image_shape,
                backend,
            );
            let pgd = Pgd::from_spec(&attack, 7);
            let out = pgd
                .run(&mut model, &data.pixels, &data.labels, &ids)
                .unwrap();
            let what = format!("{} on {backend:?}", attack.id);
            assert_eq!(data.pixels, original, "{what}: input data changed");
            assert!(
                out.adversarial
                    .iter()
                    .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                "{what}: outside [0,1] or NaN"
            );
            for i in 0..data.len() {
                let delta = out.adversarial[i * len..(i + 1) * len]
                    .iter()
                    .zip(&data.pixels[i * len..(i + 1) * len])
                    .map(|(a, b)| a - b);
                let size = norm_of(delta, attack.norm);
                assert!(
                    size <= attack.eps + 1e-6,
                    "{what}: sample {i} perturbation {size} > eps {}",
                    attack.eps
                );
            }
            // Same seed, same result; a sample alone, the same as inside the batch.
            let again = pgd
                .run(&mut model, &data.pixels, &data.labels, &ids)
                .unwrap();
            assert_eq!(again, out, "{what}: not reproducible");
            for i in [0usize, 4] {
                let alone = pgd
                    .run(
                        &mut model,
                        data.pixels_of(i..i + 1),
                        &data.labels[i..i + 1],
                        &ids[i..i + 1],
                    )
                    .unwrap();
                assert_eq!(
                    alone.fooled[0], out.fooled[i],
                    "{what}: sample {i} alone differs"
                );
                let drift = alone
                    .adversarial
                    .iter()
                    .zip(&out.adversarial[i * len..(i + 1) * len])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(drift <= 1e-4, "{what}: sample {i} alone drifts by {drift}");
            }
        }
    }
}

#[test]
fn another_seed_gives_another_random_start() {
    let data = load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    let ids: Vec<u64> = (0..data.len() as u64).collect();
    let attack = spec(AttackKind::Pgd, Norm::Linf, 0.01, 1, 1e-6, 1, Loss::Ce);
    let mut model = gradient_model(
        "tests/fixtures/tiny_cnn.onnx",
        Loss::Ce,
        data.image_shape,
        BackendChoice::Tract,
    );
    let a = Pgd::from_spec(&attack, 1)
        .run(&mut model, &data.pixels, &data.labels, &ids)
        .unwrap();
    let b = Pgd::from_spec(&attack, 2)
        .run(&mut model, &data.pixels, &data.labels, &ids)
        .unwrap();
    assert_ne!(a.adversarial, b.adversarial);
}

fn fashion_mnist(n: usize) -> Option<Dataset> {
    let dir = fashion_mnist_dir()?;
    let mut data = DataSpec::FashionMnist(dir).load(Split::Test).unwrap();
    data.truncate(n);
    Some(data)
}

/// Robust accuracy of `model` under `attack` on the clean-correct samples of `data`.
fn robust_accuracy(model_file: &str, attack: &AttackSpec, data: &Dataset) -> f64 {
    let mut model = gradient_model(
        model_file,
        attack.loss,
        data.image_shape,
        BackendChoice::Ort,
    );
    let ids: Vec<u64> = (0..data.len() as u64).collect();
    let clean = model
        .loss_and_grad(&data.pixels, &data.labels, None, data.len())
        .unwrap();
    let correct: Vec<bool> = clean
        .logits
        .argmax()
        .iter()
        .zip(&data.labels)
        .map(|(p, y)| *p as i64 == *y)
        .collect();
    let out = Pgd::from_spec(attack, 0)
        .run(&mut model, &data.pixels, &data.labels, &ids)
        .unwrap();
    correct
        .iter()
        .zip(&out.fooled)
        .filter(|(c, f)| **c && !**f)
        .count() as f64
        / data.len() as f64
}

#[test]
fn stronger_attacks_never_do_worse_beyond_noise() {
    let Some(data) = fashion_mnist(300) else {
        return;
    };
    let model = "models/fmnist-cnn.onnx";
    let pgd = |eps: f32, steps: u32| {
        spec(
            AttackKind::Pgd,
            Norm::Linf,
            eps,
            steps,
            eps / 4.0,
            1,
            Loss::Ce,
        )
    };
    let by_eps: Vec<f64> = [0.0, 0.02, 0.05, 0.1]
        .iter()
        .map(|&e| robust_accuracy(model, &pgd(e, 10), &data))
        .collect();
    let by_steps: Vec<f64> = [1, 5, 20]
        .iter()
        .map(|&s| robust_accuracy(model, &pgd(0.05, s), &data))
        .collect();
    let noise = 0.01;
    for w in by_eps.windows(2).chain(by_steps.windows(2)) {
        assert!(
            w[1] <= w[0] + noise,
            "robust accuracy rose: eps {by_eps:?}, steps {by_steps:?}"
        );
    }
    assert!(
        by_eps[0] > by_eps[3] + 0.5,
        "the attack barely works: {by_eps:?}"
    );
}

#[test]
fn a_plain_model_collapses_and_an_adversarially_trained_one_holds() {
    let Some(data) = fashion_mnist(500) else {
        return;
    };
    let attack = spec(AttackKind::Pgd, Norm::Linf, 0.1, 20, 0.01, 1, Loss::Ce);
    let plain = robust_accuracy("models/fmnist-cnn.onnx", &attack, &data);
    let trained = robust_accuracy("models/fmnist-cnn-at.onnx", &attack, &data);
    assert!(plain < 0.15, "plain model keeps {plain}");
    assert!(
        trained > plain + 0.4,
        "adversarially trained model keeps only {trained} (plain {plain})"
    );
}
