//! Both backends against PyTorch's golden logits and predictions, and against each other.

use crate::util::{cpu, fashion_mnist_dir, fixture, pixels, repo_path, test_backend, BACKENDS};
use upat::data::{load_npz, read_npz_f32, DataSpec, Split};
use upat::onnx::{ClassifierGraph, Normalization, OnnxModel};
use upat::runtime::{self, BackendChoice, Classifier};

fn open(
    model: &str,
    backend: BackendChoice,
    output: Option<&str>,
    norm: Option<&Normalization>,
) -> Box<dyn Classifier> {
    let model = OnnxModel::load(&fixture(model)).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, output, norm).unwrap();
    runtime::open(&graph, [3, 8, 8], cpu(backend)).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

test_backend!(every_backend_reproduces_pytorch_golden_logits:
    every_backend_reproduces_pytorch_golden_logits_on_ort => BackendChoice::Ort,
    every_backend_reproduces_pytorch_golden_logits_on_tract => BackendChoice::Tract);

fn every_backend_reproduces_pytorch_golden_logits(backend: BackendChoice) {
    let golden = fixture("tiny_cnn_golden.npz");
    let (_, x) = read_npz_f32(&golden, "x").unwrap();
    let (shape, expected) = read_npz_f32(&golden, "logits").unwrap();
    let n = shape[0];
    for (model, output) in [
        ("tiny_cnn.onnx", None),
        ("tiny_cnn_batch1.onnx", None),
        ("tiny_cnn_two_outputs.onnx", Some("logits")),
    ] {
        let logits = open(model, backend, output, None).logits(&x, n).unwrap();
        assert_eq!(logits.classes, 5);
        let diff = max_abs_diff(&logits.values, &expected);
        assert!(
            diff <= 1e-5,
            "{model} on {backend:?}: max |Δlogit| = {diff}"
        );
    }
}

#[test]
fn ort_and_tract_agree_on_odd_batches() {
    let n = 7;
    let x = pixels(n * 3 * 8 * 8, 42);
    let ort = open("tiny_cnn.onnx", BackendChoice::Ort, None, None)
        .logits(&x, n)
        .unwrap();
    let tract = open("tiny_cnn.onnx", BackendChoice::Tract, None, None)
        .logits(&x, n)
        .unwrap();
    let diff = max_abs_diff(&ort.values, &tract.values);
    assert!(diff <= 1e-5, "ort vs tract: {diff}");
    // A fixed batch-1 model run on 7 images gives the same rows.
    let fixed = open("tiny_cnn_batch1.onnx", BackendChoice::Tract, None, None)
        .logits(&x, n)
        .unwrap();
    assert!(max_abs_diff(&fixed.values, &tract.values) <= 1e-5);
}

#[test]
fn normalization_is_folded_into_the_graph() {
    let n = 3;
    let x = pixels(n * 3 * 8 * 8, 7);
    let norm: Normalization = "0.1,0.2,0.3:0.5,0.25,2.0".parse().unwrap();
    let normalized_input: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / 64) % 3;
            (v - norm.mean[c]) / norm.std[c]
        })
        .collect();
    for backend in BACKENDS {
        let folded = open("tiny_cnn.onnx", backend, None, Some(&norm))
            .logits(&x, n)
            .unwrap();
        let manual = open("tiny_cnn.onnx", backend, None, None)
            .logits(&normalized_input, n)
            .unwrap();
        let diff = max_abs_diff(&folded.values, &manual.values);
        assert!(diff <= 1e-5, "{backend:?}: {diff}");
        // And normalisation changes the answer, so the test could fail.
        let plain = open("tiny_cnn.onnx", backend, None, None)
            .logits(&x, n)
            .unwrap();
        assert!(max_abs_diff(&folded.values, &plain.values) > 1e-2);
    }
}

#[test]
fn models_with_several_outputs_need_a_choice() {
    let model = OnnxModel::load(&fixture("tiny_cnn_two_outputs.onnx")).unwrap();
    let err = ClassifierGraph::prepare(&model, None, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--output") && err.contains("`logits`") && err.contains("`features`"),
        "{err}"
    );
    let err = ClassifierGraph::prepare(&model, None, Some("probs"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no output named `probs`"), "{err}");
}

test_backend!(golden_npz_audits_as_labelled:
    golden_npz_audits_as_labelled_on_ort => BackendChoice::Ort,
    golden_npz_audits_as_labelled_on_tract => BackendChoice::Tract);

fn golden_npz_audits_as_labelled(backend: BackendChoice) {
    // The generator flipped labels 0 and 3, so 4 of 6 are right on both backends.
    let data = load_npz(&fixture("tiny_cnn_golden.npz")).unwrap();
    let logits = open("tiny_cnn.onnx", backend, None, None)
        .logits(&data.pixels_of(0..data.len()).unwrap(), data.len())
        .unwrap();
    let correct: Vec<bool> = logits
        .argmax()
        .iter()
        .zip(&data.labels)
        .map(|(p, y)| *p as i64 == *y)
        .collect();
    assert_eq!(
        correct,
        [false, true, true, false, true, true],
        "{backend:?}"
    );
}

#[test]
fn pytorch_fashion_mnist_cnn_gets_pytorchs_exact_predictions() {
    reproduces_expected_predictions("models/fmnist-cnn.onnx", "models/fmnist-cnn.expected.json");
}

/// A Keras model converted with tf2onnx (channels-last input): both
/// backends give ONNX Runtime's predictions in Python, hence its clean
/// accuracy.
#[test]
fn keras_nhwc_model_gets_onnx_runtimes_python_predictions() {
    reproduces_expected_predictions(
        "models/fmnist-keras-nhwc.onnx",
        "models/fmnist-keras-nhwc.expected.json",
    );
}

/// An int8 QDQ model (ONNX Runtime's static quantization): both backends
/// run its quantized forward pass and give ONNX Runtime's Python
/// predictions.
#[test]
fn quantized_qdq_model_gets_onnx_runtimes_python_predictions() {
    reproduces_expected_predictions(
        "models/fmnist-cnn-qdq.onnx",
        "models/fmnist-cnn-qdq.expected.json",
    );
}

/// Both backends reproduce every prediction `expected` records on the first
/// Fashion-MNIST test images.
fn reproduces_expected_predictions(model: &str, expected: &str) {
    let Some(dir) = fashion_mnist_dir() else {
        return;
    };
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path(expected)).unwrap()).unwrap();
    let samples = expected["samples"].as_u64().unwrap() as usize;
    let torch_predictions: Vec<usize> = expected["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut data = DataSpec::FashionMnist(dir).load(Split::Test).unwrap();
    data.truncate(samples);
    let model = OnnxModel::load(&repo_path(model)).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    for backend in BACKENDS {
        let mut classifier = runtime::open(&graph, data.image_shape, cpu(backend)).unwrap();
        let mut predictions = Vec::new();
        for start in (0..samples).step_by(128) {
            let end = (start + 128).min(samples);
            predictions.extend(
                classifier
                    .logits(&data.pixels_of(start..end).unwrap(), end - start)
                    .unwrap()
                    .argmax(),
            );
        }
        assert_eq!(
            predictions, torch_predictions,
            "{backend:?} predictions differ from the reference's"
        );
    }
}

test_backend!(thread_counts_do_not_change_logits:
    thread_counts_do_not_change_logits_on_ort => BackendChoice::Ort,
    thread_counts_do_not_change_logits_on_tract => BackendChoice::Tract);

fn thread_counts_do_not_change_logits(backend: BackendChoice) {
    let model = OnnxModel::load(&repo_path("models/fmnist-cnn.onnx")).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    let n = 96;
    let x = pixels(n * 28 * 28, 7);
    let logits = |threads: Option<usize>| {
        let mut options = cpu(backend);
        options.threads = threads.and_then(std::num::NonZeroUsize::new);
        runtime::open(&graph, [1, 28, 28], options)
            .unwrap()
            .logits(&x, n)
            .unwrap()
            .values
    };
    let default = logits(None);
    for threads in [1, 3] {
        let diff = max_abs_diff(&logits(Some(threads)), &default);
        assert!(
            diff <= 1e-5,
            "{backend:?} with {threads} threads: max |Δlogit| = {diff}"
        );
    }
}

/// tract cuts a batch into one part per thread; the parts' values must be
/// the whole batch's, for an odd batch whose last part is padded too, and
/// with more threads than rows.
#[test]
fn tract_batches_cut_into_parts_give_the_whole_batchs_values() {
    use upat::attack::Loss;
    use upat::onnx::grad;
    use upat::runtime::GradientModel;
    let model = OnnxModel::load(&repo_path("models/fmnist-cnn-at.onnx")).unwrap();
    let graph = ClassifierGraph::prepare(&model, None, None, None).unwrap();
    let gradient = grad::build(&graph, [1, 28, 28], Loss::Ce).unwrap();
    let n = 7;
    let x = pixels(n * 28 * 28, 11);
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 3) % 10).collect();
    let run = |threads: usize| {
        let mut options = cpu(BackendChoice::Tract);
        options.threads = std::num::NonZeroUsize::new(threads);
        let logits = runtime::open(&graph, [1, 28, 28], options)
            .unwrap()
            .logits(&x, n)
            .unwrap();
        let mut session = GradientModel::open(&gradient, [1, 28, 28], options).unwrap();
        (logits, session.loss_and_grad(&x, &labels, None, n).unwrap())
    };
    let (whole_logits, whole) = run(1);
    assert_eq!(whole.input_grad.len(), n * 28 * 28);
    assert!(whole.input_grad.iter().any(|&g| g != 0.0));
    // The same rows through the same graph: only kernels chosen for another
    // batch length (a matrix-vector product for one row, a reduction's
    // vectorised tail) may round differently.
    for threads in [2, 3, 8] {
        let (logits, parts) = run(threads);
        for (what, ours, theirs) in [
            ("logits", &logits.values, &whole_logits.values),
            (
                "gradient graph's logits",
                &parts.logits.values,
                &whole.logits.values,
            ),
            ("loss", &parts.loss, &whole.loss),
            ("gradient", &parts.input_grad, &whole.input_grad),
        ] {
            let diff = max_abs_diff(ours, theirs);
            assert!(
                diff <= 1e-5,
                "{what} with {threads} threads: max |Δ| = {diff}"
            );
        }
    }
}
