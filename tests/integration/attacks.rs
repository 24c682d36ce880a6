//! Attack invariants (DESIGN §3) on both backends, for every registered
//! attack, and attack strength.

use crate::util::{cpu, fashion_mnist_dir, fixture, repo_path, standard_fields, test_backend};
use std::sync::Arc;
use upat::attack::project::norm_of;
use upat::attack::{registry, Attack, Batch, Fields, Guarded, Loss, Model, Norm, ATTACKS};
use upat::audit::victim::Victim;
use upat::data::{load_npz, DataSpec, Dataset, Split};
use upat::onnx::{ClassifierGraph, OnnxModel};
use upat::runtime::BackendChoice;

/// A model file with its classifier graph, for [`Victim`]s to borrow.
struct Loaded {
    model: OnnxModel,
    graph: ClassifierGraph,
}

fn load(model: &str) -> Loaded {
    let model = OnnxModel::load(&repo_path(model)).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    Loaded { model, graph }
}

fn victim<'a>(loaded: &'a Loaded, data: &Dataset, backend: BackendChoice) -> Victim<'a> {
    Victim::open(
        &loaded.model,
        &loaded.graph,
        data.image_shape,
        cpu(backend),
        &data.pixels_of(0..1).unwrap(),
    )
    .unwrap()
}

/// A registered attack built from suite fields, as a suite would.
fn attack(kind: &str, fields: Fields) -> Arc<dyn Attack> {
    (registry::lookup(kind).unwrap().build)(&fields).unwrap_or_else(|e| panic!("{kind}: {e:?}"))
}

fn pgd(
    norm: Norm,
    eps: f32,
    steps: u32,
    step_size: f32,
    restarts: u32,
    loss: Loss,
) -> Arc<dyn Attack> {
    attack(
        "pgd",
        Fields {
            norm,
            eps: Some(eps),
            steps: Some(steps),
            step_size: Some(step_size),
            restarts,
            loss: Some(loss),
            ..Fields::default()
        },
    )
}

/// Runs `attack` on the model as the audit does: through the guard that
/// holds it to its declared oracle.
fn run(
    attack: &dyn Attack,
    model: &mut dyn Model,
    data: &Dataset,
    range: std::ops::Range<usize>,
    seed: u64,
) -> upat::attack::Perturbed {
    let batch = Batch {
        images: &data.pixels_of(range.clone()).unwrap(),
        labels: &data.labels[range.clone()],
        ids: &data.ids[range.clone()],
        seed,
        rows_per_call: range.len(),
        reference: None,
    };
    attack
        .run(&mut Guarded::new(model, attack), &batch)
        .unwrap_or_else(|e| panic!("{attack:?}: {e}"))
}

/// Settings for the invariant test: each registered kind is built from
/// each, with the fields it reads (`util::standard_fields`).
fn invariant_settings() -> Vec<(Norm, f32, f32, Loss)> {
    vec![
        (Norm::Linf, 0.03, 0.01, Loss::Ce),
        (Norm::Linf, 0.03, 0.01, Loss::Margin),
        (Norm::Linf, 0.03, 0.01, Loss::Dlr),
        (Norm::L2, 0.3, 0.1, Loss::Ce),
        (Norm::L1, 2.0, 0.5, Loss::Ce),
    ]
}

/// Every registered attack in every invariant setting it accepts.
fn registered_attacks() -> Vec<Arc<dyn Attack>> {
    let mut attacks = Vec::new();
    for entry in ATTACKS {
        let before = attacks.len();
        for (norm, eps, step_size, loss) in invariant_settings() {
            if !entry.fields.contains(&"loss") && loss != Loss::Ce {
                continue;
            }
            if let Some(fields) = standard_fields(entry, norm, eps, step_size, loss) {
                attacks.push((entry.build)(&fields).unwrap());
            }
        }
        assert!(
            attacks.len() > before,
            "no invariant setting builds kind `{}`: add one",
            entry.kind
        );
    }
    attacks
}

test_backend!(every_registered_attack_keeps_the_invariants:
    every_registered_attack_keeps_the_invariants_on_ort => BackendChoice::Ort,
    every_registered_attack_keeps_the_invariants_on_tract => BackendChoice::Tract);

fn every_registered_attack_keeps_the_invariants(backend: BackendChoice) {
    let data = load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    let original = data.pixels_of(0..data.len()).unwrap().into_owned();
    let len = data.image_len();
    let loaded = load("tests/fixtures/tiny_cnn.onnx");
    let mut model = victim(&loaded, &data, backend);
    let all = 0..data.len();
    for attack in registered_attacks() {
        let settings = attack.settings();
        let out = run(attack.as_ref(), &mut model, &data, all.clone(), 7);
        let what = format!("{attack:?} on {backend:?}");
        assert_eq!(
            *data.pixels_of(0..data.len()).unwrap(),
            original,
            "{what}: input data changed"
        );
        assert!(
            out.adversarial
                .iter()
                .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
            "{what}: outside [0,1] or NaN"
        );
        for i in 0..data.len() {
            let clean = data.pixels_of(i..i + 1).unwrap();
            let delta = out.adversarial[i * len..(i + 1) * len]
                .iter()
                .zip(clean.iter())
                .map(|(a, b)| a - b);
            let size = norm_of(delta, settings.norm);
            assert!(
                size <= settings.eps + 1e-6,
                "{what}: sample {i} perturbation {size} > eps {}",
                settings.eps
            );
            assert!(out.queries[i] >= 1, "{what}: sample {i} never evaluated");
        }
        // What the attack claims is what the model says of its examples.
        let predicted = model.logits(&out.adversarial, data.len()).unwrap().argmax();
        for (i, (&p, &y)) in predicted.iter().zip(&data.labels).enumerate() {
            if out.fooled[i] {
                assert_ne!(p as i64, y, "{what}: sample {i} claimed fooled");
            }
        }
        // Same seed, same result; a sample alone, the same as inside the batch.
        let again = run(attack.as_ref(), &mut model, &data, all.clone(), 7);
        assert_eq!(again, out, "{what}: not reproducible");
        for i in [0usize, 4] {
            let alone = run(attack.as_ref(), &mut model, &data, i..i + 1, 7);
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

#[test]
fn another_seed_gives_another_random_start() {
    let data = load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    let attack = pgd(Norm::Linf, 0.01, 1, 1e-6, 1, Loss::Ce);
    let loaded = load("tests/fixtures/tiny_cnn.onnx");
    let mut model = victim(&loaded, &data, BackendChoice::Tract);
    let a = run(attack.as_ref(), &mut model, &data, 0..data.len(), 1);
    let b = run(attack.as_ref(), &mut model, &data, 0..data.len(), 2);
    assert_ne!(a.adversarial, b.adversarial);
}

fn fashion_mnist(n: usize) -> Option<Dataset> {
    let dir = fashion_mnist_dir()?;
    let mut data = DataSpec::FashionMnist(dir).load(Split::Test).unwrap();
    data.truncate(n);
    Some(data)
}

/// Robust accuracy of `model` under `attack` on the clean-correct samples of `data`.
fn robust_accuracy(model_file: &str, attack: &dyn Attack, data: &Dataset) -> f64 {
    let loaded = load(model_file);
    let mut model = victim(&loaded, data, BackendChoice::Ort);
    let clean = model
        .logits(&data.pixels_of(0..data.len()).unwrap(), data.len())
        .unwrap();
    let correct: Vec<bool> = clean
        .argmax()
        .iter()
        .zip(&data.labels)
        .map(|(p, y)| *p as i64 == *y)
        .collect();
    let out = run(attack, &mut model, data, 0..data.len(), 0);
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
    let linf =
        |eps: f32, steps: u32| pgd(Norm::Linf, eps, steps, (eps / 4.0).max(1e-6), 1, Loss::Ce);
    let by_eps: Vec<f64> = [0.0, 0.02, 0.05, 0.1]
        .iter()
        .map(|&e| robust_accuracy(model, linf(e, 10).as_ref(), &data))
        .collect();
    let by_steps: Vec<f64> = [1, 5, 20]
        .iter()
        .map(|&s| robust_accuracy(model, linf(0.05, s).as_ref(), &data))
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
    let attack = pgd(Norm::Linf, 0.1, 20, 0.01, 1, Loss::Ce);
    let plain = robust_accuracy("models/fmnist-cnn.onnx", attack.as_ref(), &data);
    let trained = robust_accuracy("models/fmnist-cnn-at.onnx", attack.as_ref(), &data);
    assert!(plain < 0.15, "plain model keeps {plain}");
    assert!(
        trained > plain + 0.4,
        "adversarially trained model keeps only {trained} (plain {plain})"
    );
}
