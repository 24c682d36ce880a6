//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Output;
use upat::runtime::{BackendChoice, Device, RuntimeOptions};

/// Both backends, for tests whose body must hold on each.
pub const BACKENDS: [BackendChoice; 2] = [BackendChoice::Ort, BackendChoice::Tract];

pub fn cpu(backend: BackendChoice) -> RuntimeOptions {
    RuntimeOptions {
        backend,
        device: Device::Cpu,
        threads: None,
    }
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn fixture(name: &str) -> PathBuf {
    repo_path("tests/fixtures").join(name)
}

/// Runs `upat-audit` with `args` in `dir`.
pub fn upat_audit(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upat-audit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("upat-audit runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fashion-MNIST's system directory, or `None` (with a note) when it is not
/// installed. With `UPAT_REQUIRE_FASHION_MNIST=1` (set by the test script)
/// a missing dataset fails the test instead of skipping it.
pub fn fashion_mnist_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(upat::data::FASHION_MNIST_SYSTEM_DIR);
    if dir.join("t10k-images-idx3-ubyte.gz").is_file() {
        return Some(dir);
    }
    if std::env::var("UPAT_REQUIRE_FASHION_MNIST").is_ok_and(|v| v == "1") {
        panic!("Fashion-MNIST is required but missing: apt-get install dataset-fashion-mnist");
    }
    eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    None
}

/// Reads a CSV file into its header and rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// The value of `column` in `row`.
pub fn cell<'a>(header: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    &row[i]
}

/// Suite fields for a registered attack kind from one standard setting:
/// every field the kind reads, set (two restarts, random starts, 200
/// queries), with the
/// first step count it accepts (5, else 1). `None` when it accepts neither.
pub fn standard_fields(
    entry: &upat::attack::Entry,
    norm: upat::attack::Norm,
    eps: f32,
    step_size: f32,
    loss: upat::attack::Loss,
) -> Option<upat::attack::Fields> {
    let reads = |f: &str| entry.fields.contains(&f);
    [5, 1].into_iter().find_map(|steps| {
        let fields = upat::attack::Fields {
            norm,
            eps: Some(eps),
            steps: reads("steps").then_some(steps),
            step_size: reads("step_size").then_some(step_size),
            restarts: if reads("restarts") { 2 } else { 1 },
            random_start: reads("random_start").then_some(true),
            loss: reads("loss").then_some(loss),
            queries: reads("queries").then_some(200),
            ..Default::default()
        };
        (entry.build)(&fields).ok().map(|_| fields)
    })
}

/// `fields` as the lines of a suite's `[[attack]]` table for `entry`
/// (norm and restarts only where it reads them).
pub fn fields_toml(entry: &upat::attack::Entry, fields: &upat::attack::Fields) -> String {
    let mut lines = Vec::new();
    if entry.fields.contains(&"norm") {
        lines.push(format!("norm = '{}'", fields.norm.as_str()));
    }
    if entry.fields.contains(&"restarts") {
        lines.push(format!("restarts = {}", fields.restarts));
    }
    if let Some(eps) = fields.eps {
        lines.push(format!("eps = {eps}"));
    }
    if let Some(steps) = fields.steps {
        lines.push(format!("steps = {steps}"));
    }
    if let Some(step_size) = fields.step_size {
        lines.push(format!("step_size = {step_size}"));
    }
    if let Some(random_start) = fields.random_start {
        lines.push(format!("random_start = {random_start}"));
    }
    if let Some(queries) = fields.queries {
        lines.push(format!("queries = {queries}"));
    }
    if let Some(loss) = fields.loss {
        lines.push(format!("loss = '{}'", loss.as_str()));
    }
    lines.join("\n") + "\n"
}

/// A white-box attack, AutoAttack's cascade and a transfer attack (FGSM):
/// every kind of step an audit journals, resumes and shards.
pub const MIXED_SUITE: &str = r#"
name = "mixed"
[[attack]]
id = "pgd"
kind = "pgd"
norm = "linf"
eps = 0.1
steps = 10
step_size = 0.02
min_robust_acc = 0.0
[[attack]]
id = "aa"
kind = "autoattack"
version = "standard"
norm = "linf"
eps = 0.1
[[attack]]
id = "transfer"
kind = "transfer"
craft = "fgsm"
eps = 0.1
"#;

/// report.csv's rows without the `seconds` column.
pub fn report_without_seconds(out: &Path) -> Vec<Vec<String>> {
    let (header, mut rows) = read_csv(&out.join("report.csv"));
    let seconds = header.iter().position(|h| h == "seconds").unwrap();
    rows.iter_mut().for_each(|r| {
        r.remove(seconds);
    });
    rows
}

/// max |a − b| / max |b|.
pub fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Deterministic pseudo-random pixels in [0, 1].
pub fn pixels(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// One test body, one named `#[test]` per backend (as candle's
/// `test_device!`): `test_backend!(body: body_on_ort => BackendChoice::Ort, …)`.
macro_rules! test_backend {
    ($body:ident: $($name:ident => $backend:expr),+) => {
        $(#[test] fn $name() { $body($backend) })+
    };
}
pub(crate) use test_backend;

/// An ONNX model mapping `[N, C, H, W]` images to `width` outputs through
/// Flatten and one MatMul (small, deterministic weights): a stand-in for an
/// encoder, or for a classifier of any number of classes.
pub fn linear_model(image: [usize; 3], width: usize) -> Vec<u8> {
    use upat::onnx::{pb, tensor_value_info};
    let features: usize = image.iter().product();
    let mut input_dims = vec![None];
    input_dims.extend(image.iter().map(|&d| Some(d as i64)));
    let weights = pb::TensorProto {
        name: "w".into(),
        data_type: 1,
        dims: vec![features as i64, width as i64],
        float_data: (0..features * width)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "linear".into(),
            node: vec![
                node("Flatten", &["input"], "flat"),
                node("MatMul", &["flat", "w"], "output"),
            ],
            initializer: vec![weights],
            input: vec![tensor_value_info("input", 1, &input_dims)],
            output: vec![tensor_value_info("output", 1, &[None, Some(width as i64)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&proto)
}
