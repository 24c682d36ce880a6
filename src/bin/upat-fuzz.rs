//! Mutation fuzzing of everything that reads a file a stranger may have
//! made: the ONNX decoder with the classifier contract and the gradient
//! graph, the `.npz`, IDX and CIFAR loaders, and the suite parser. Seeds are
//! the test fixtures and built-in suites; each input is a seed mutated a few
//! times (bit flips, interesting integers, insertions, deletions, splices,
//! truncations). Any panic is a finding: the input is saved and the run
//! fails. Errors are the expected outcome. Memory is bounded by
//! `UPAT_MAX_MEMORY` (1 GiB here unless set) and, in scripts/fuzz.sh and the
//! tests, by `ulimit -v`.
//!
//!     upat-fuzz [--seconds S | --iterations N] [--seed K] [--findings DIR] [TARGET...]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use upat::attack::{Suite, BUILTIN_SUITES};
use upat::data::DataSpec;
use upat::onnx::{ClassifierGraph, OnnxModel};

const TARGETS: [&str; 6] = ["onnx", "npz", "idx", "cifar", "suite", "image"];

fn main() -> ExitCode {
    if std::env::var_os("UPAT_MAX_MEMORY").is_none() {
        std::env::set_var("UPAT_MAX_MEMORY", "1G");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("error: {message}\nusage: upat-fuzz [--seconds S | --iterations N] [--seed K] [--findings DIR] [{}]", TARGETS.join(" "));
            return ExitCode::from(2);
        }
    };
    let seeds = match Seeds::load() {
        Ok(s) => s,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let scratch = match Scratch::create() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot make a scratch directory: {e}");
            return ExitCode::from(2);
        }
    };
    quiet_panics();
    let mut rng = Rng(options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let started = Instant::now();
    let mut runs = [0u64; TARGETS.len()];
    let mut stages: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    let mut findings = 0;
    let mut iteration = 0u64;
    while options.more(iteration, started) {
        let target = options.targets[iteration as usize % options.targets.len()];
        let index = TARGETS.iter().position(|t| *t == target).unwrap();
        let input = seeds.mutated(target, &mut rng);
        let outcome = std::panic::catch_unwind(|| run(target, &input, scratch.path()));
        runs[index] += 1;
        if let Ok(stage) = outcome {
            *stages.entry((target, stage)).or_default() += 1;
        }
        if let Err(payload) = outcome {
            findings += 1;
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let saved = options.findings.join(format!("{target}-{iteration}.bin"));
            let _ = std::fs::create_dir_all(&options.findings);
            let _ = std::fs::write(&saved, &input);
            eprintln!(
                "finding: {target} panicked ({message}); input saved to {}",
                saved.display()
            );
        }
        iteration += 1;
    }
    let per_target: Vec<String> = TARGETS
        .iter()
        .zip(runs)
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    println!(
        "fuzzed {iteration} inputs in {:.1}s ({}); {findings} finding(s)",
        started.elapsed().as_secs_f64(),
        per_target.join(", ")
    );
    let reach: Vec<String> = stages
        .iter()
        .map(|((t, s), n)| format!("{t}:{s} {n}"))
        .collect();
    println!("how far inputs got: {}", reach.join(", "));
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A fresh private directory for the files the loaders read, removed at exit.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("upat-fuzz-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Feeds `input` to `target`; an `Err` is fine, a panic is a finding.
/// Returns how far the input got (`accepted` when it was read whole).
fn run(target: &str, input: &[u8], scratch: &Path) -> &'static str {
    let reached = |ok: bool| if ok { "accepted" } else { "refused" };
    match target {
        "onnx" => {
            let path = Path::new("fuzz.onnx");
            let Ok(model) = OnnxModel::from_bytes(path, input) else {
                return "refused";
            };
            let Ok(graph) = ClassifierGraph::prepare(&model, None, None, None) else {
                return "decoded";
            };
            let [c, h, w] = graph.input.chw.map(|d| d.unwrap_or(8));
            match upat::onnx::grad::build(&graph, [c, h, w], upat::attack::Loss::Ce) {
                Ok(_) => "accepted",
                Err(_) => "prepared",
            }
        }
        "npz" => {
            let path = scratch.join("fuzz.npz");
            std::fs::write(&path, input).expect("scratch is writable");
            reached(DataSpec::Npz(path).load(upat::data::Split::Test).is_ok())
        }
        "idx" => {
            // The mutated file is the images (gzipped half the time); the
            // labels are a valid file of 10.
            let gz = input.first().is_some_and(|b| b & 1 == 1);
            let images = scratch.join(if gz {
                "t10k-images-idx3-ubyte.gz"
            } else {
                "t10k-images-idx3-ubyte"
            });
            let other = scratch.join(if gz {
                "t10k-images-idx3-ubyte"
            } else {
                "t10k-images-idx3-ubyte.gz"
            });
            let _ = std::fs::remove_file(other);
            let bytes = if gz { gzip(input) } else { input.to_vec() };
            std::fs::write(&images, bytes).expect("scratch is writable");
            let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 10];
            labels.extend(0..10u8);
            std::fs::write(scratch.join("t10k-labels-idx1-ubyte"), labels)
                .expect("scratch is writable");
            reached(
                DataSpec::Mnist(scratch.to_path_buf())
                    .load(upat::data::Split::Test)
                    .is_ok(),
            )
        }
        "cifar" => {
            std::fs::write(scratch.join("test_batch.bin"), input).expect("scratch is writable");
            reached(
                DataSpec::Cifar10(scratch.to_path_buf())
                    .load(upat::data::Split::Test)
                    .is_ok(),
            )
        }
        "suite" => reached(Suite::parse(&String::from_utf8_lossy(input), "fuzz.toml").is_ok()),
        "image" => {
            // Decoded to RGB and to grey, then resized and cropped as
            // ImageNet models are fed (a small size keeps iterations fast).
            let transform: upat::data::images::transform::Transform =
                "resize=40,crop=32".parse().expect("a valid transform");
            let channels = if input.len().is_multiple_of(2) { 3 } else { 1 };
            match upat::data::images::decode::decode(input, channels) {
                Ok(image) => {
                    let out = transform.apply(image);
                    assert_eq!(out.pixels.len(), 32 * 32 * channels);
                    "accepted"
                }
                Err(_) => "refused",
            }
        }
        _ => unreachable!("targets are checked when parsed"),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("in memory");
    gz.finish().expect("in memory")
}

/// Keeps the default hook from printing each caught panic's backtrace.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

struct Options {
    seconds: Option<f64>,
    iterations: Option<u64>,
    seed: u64,
    findings: PathBuf,
    targets: Vec<&'static str>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            seconds: None,
            iterations: None,
            seed: 1,
            findings: PathBuf::from("fuzz-findings"),
            targets: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--seconds" => {
                    options.seconds =
                        Some(value()?.parse().map_err(|_| "--seconds takes a number")?)
                }
                "--iterations" => {
                    options.iterations = Some(
                        value()?
                            .parse()
                            .map_err(|_| "--iterations takes a whole number")?,
                    )
                }
                "--seed" => {
                    options.seed = value()?
                        .parse()
                        .map_err(|_| "--seed takes a whole number")?
                }
                "--findings" => options.findings = PathBuf::from(value()?),
                target => match TARGETS.iter().find(|t| **t == target) {
                    Some(t) => options.targets.push(t),
                    None => return Err(format!("unknown target `{target}`")),
                },
            }
        }
        if options.targets.is_empty() {
            options.targets = TARGETS.to_vec();
        }
        if options.seconds.is_none() && options.iterations.is_none() {
            options.iterations = Some(1000);
        }
        Ok(options)
    }

    fn more(&self, iteration: u64, started: Instant) -> bool {
        self.iterations.is_none_or(|n| iteration < n)
            && self
                .seconds
                .is_none_or(|s| started.elapsed() < Duration::from_secs_f64(s))
    }
}

/// Valid inputs of every target, to mutate.
struct Seeds {
    by_target: Vec<(&'static str, Vec<Vec<u8>>)>,
}

impl Seeds {
    fn load() -> Result<Self, String> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let files = |dir: &Path, ext: &str| -> Result<Vec<Vec<u8>>, String> {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                let path = entry.map_err(|e| e.to_string())?.path();
                if path.extension().is_some_and(|x| x == ext) {
                    found.push(
                        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
                    );
                }
            }
            Ok(found)
        };
        let mut onnx = files(&fixtures, "onnx")?;
        onnx.extend(files(&fixtures.join("hostile"), "onnx")?);
        let npz = files(&fixtures, "npz")?;
        let mut images = files(&fixtures.join("images"), "jpg")?;
        images.extend(files(&fixtures.join("images"), "png")?);
        let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0, 0, 4];
        idx.extend((0..160u32).map(|i| (i * 37 % 256) as u8));
        let cifar: Vec<u8> = (0..2 * 3073u32)
            .map(|i| if i % 3073 == 0 { 3 } else { (i % 251) as u8 })
            .collect();
        let suites = BUILTIN_SUITES
            .iter()
            .map(|(_, text)| text.as_bytes().to_vec())
            .collect();
        if onnx.is_empty() || npz.is_empty() || images.is_empty() {
            return Err(format!("no seed fixtures in {}", fixtures.display()));
        }
        Ok(Seeds {
            by_target: vec![
                ("onnx", onnx),
                ("npz", npz),
                ("idx", vec![idx]),
                ("cifar", vec![cifar]),
                ("suite", suites),
                ("image", images),
            ],
        })
    }

    fn mutated(&self, target: &str, rng: &mut Rng) -> Vec<u8> {
        let (_, seeds) = self
            .by_target
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a seeded target");
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, seeds, rng);
        }
        input
    }
}

/// Integers that sit on the edges of what headers declare.
const INTERESTING: [u32; 10] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

fn mutate(input: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Rng) {
    if input.is_empty() {
        input.push(rng.next() as u8);
        return;
    }
    let at = rng.below(input.len());
    match rng.below(8) {
        0 => input[at] ^= 1 << rng.below(8),
        1 => input[at] = INTERESTING[rng.below(INTERESTING.len())] as u8,
        2 => {
            let value = INTERESTING[rng.below(INTERESTING.len())];
            let bytes = if rng.below(2) == 0 {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = input.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        3 => {
            let n = 1 + rng.below(16);
            input.splice(at..at, (0..n).map(|_| rng.next() as u8));
        }
        4 => {
            let end = (at + 1 + rng.below(64)).min(input.len());
            input.drain(at..end);
        }
        5 => input.truncate(at),
        6 => {
            let end = (at + 1 + rng.below(64)).min(input.len());
            let chunk = input[at..end].to_vec();
            let to = rng.below(input.len());
            input.splice(to..to, chunk);
        }
        _ => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                let to = rng.below(input.len());
                let stop = (to + end - from).min(input.len());
                input.splice(to..stop, other[from..end].iter().copied());
            }
        }
    }
}

/// xorshift64*: reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
