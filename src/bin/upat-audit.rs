//! `upat-audit`: audit ONNX image classifiers. Parses arguments, validates them
//! into an [`AuditPlan`], runs it, writes the reports, maps the outcome to an
//! exit code: 0 success, 1 a gate failed, 2 anything else.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use upat::attack::{registry, Loss, Suite, BUILTIN_SUITES};
use upat::audit::{run_audit, AuditPlan, AuditRequest, Fingerprint, Gate, Recorder, Shard, Start};
use upat::data::images::transform::TRANSFORM_FORMS;
use upat::data::images::ImageOptions;
use upat::data::{save_npz, DataSpec, Dataset, Split};
use upat::onnx::{ClassifierGraph, Normalization, OnnxModel};
use upat::progress::TerminalProgress;
use upat::runtime::{
    resolve_backend, resolve_device, Backend, BackendChoice, DeviceChoice, RuntimeOptions,
};

#[derive(Debug, Parser)]
#[command(
    name = "upat-audit",
    version,
    about = "Audit ONNX image classifiers against adversarial attacks"
)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    audit: AuditArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the model's gradient graph: inputs the image and `labels` (and
    /// `targets` for dlr-targeted and target-margin; for the embedding losses
    /// cosine and l2, `reference` [N, D] in place of labels); outputs the
    /// logits (or embedding), `loss` [N] and `input_grad` = d(Σ loss)/d(input).
    /// Runs on any ONNX runtime.
    Grad {
        /// The ONNX model.
        model: PathBuf,
        #[arg(long, value_enum, default_value = "ce")]
        loss: Loss,
        /// Where to write the gradient graph.
        #[arg(short = 'o', long = "output-file", value_name = "OUT.onnx")]
        out: PathBuf,
        /// Image shape C,H,W, when the model does not declare it.
        #[arg(long, value_name = "C,H,W")]
        image_shape: Option<String>,
        /// The image input, when the model has several.
        #[arg(long)]
        input: Option<String>,
        /// The logits output, when the model has several.
        #[arg(long)]
        output: Option<String>,
    },
    /// Combine the output directories of a sharded audit (--shard K/N) into
    /// the report one machine would have written; gates apply to the
    /// merged figures.
    Merge {
        /// The shard directories, one per K in 0..N.
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Report directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Fail (exit 1) when ATTACK_ID's robust accuracy is below ACC; repeatable.
        #[arg(long = "fail-under", value_name = "ATTACK_ID=ACC")]
        fail_under: Vec<String>,
        /// Exit 1 when a gradient-masking flag was raised, as for a failed gate.
        #[arg(long)]
        fail_on_flags: bool,
        /// Also write the gates and flags as JUnit XML, for CI test reporters.
        #[arg(long, value_name = "FILE.xml")]
        junit: Option<PathBuf>,
    },
    /// Write the test data as an audit would feed it to a model (decoded,
    /// preprocessed, float NCHW in [0, 1]) to an .npz with `x`, `y` and
    /// `ids` (each sample's id), to check it in Python or use it elsewhere.
    Prepare {
        /// The data (the forms are added from the library at start-up).
        #[arg(long, value_name = "SPEC")]
        data: String,
        /// Only the first N samples.
        #[arg(long, value_name = "N", value_parser = upat::cli::positive)]
        samples: Option<usize>,
        #[command(flatten)]
        images: ImageArgs,
        /// The .npz file to write.
        #[arg(long, value_name = "FILE.npz")]
        out: PathBuf,
    },
    /// Print a model's inputs, outputs, metadata and op histogram, and whether
    /// it meets the classifier contract.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// The image input, when the model has several.
        #[arg(long)]
        input: Option<String>,
        /// The logits output, when the model has several.
        #[arg(long)]
        output: Option<String>,
    },
}

/// What the user typed for an audit.
#[derive(Debug, Args)]
struct AuditArgs {
    /// ONNX models to audit; several give one comparative report.
    #[arg(value_name = "MODEL.onnx")]
    models: Vec<PathBuf>,
    /// A built-in suite's name or a suite TOML file; repeatable. (The list of
    /// built-in suites is added from the library at start-up.)
    #[arg(long = "suite", value_name = "NAME|FILE.toml", default_value = "smoke")]
    suites: Vec<String>,
    /// Test data (the forms are added from the library at start-up).
    #[arg(long, value_name = "SPEC")]
    data: Option<String>,
    /// Audit only the first N samples.
    #[arg(long, value_name = "N", value_parser = upat::cli::positive)]
    samples: Option<usize>,
    #[command(flatten)]
    images: ImageArgs,
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = upat::cli::positive)]
    batch_size: usize,
    /// auto = ONNX Runtime when its library loads, else tract.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// auto = the GPU where ONNX Runtime's CUDA provider registers, else
    /// the CPU; cuda fails (exit 2) rather than fall back.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// The backend's threads (default: one per core); --threads 1 lets N
    /// shards share N cores.
    #[arg(long, value_name = "N", value_parser = upat::cli::threads)]
    threads: Option<std::num::NonZeroUsize>,
    /// The image input's axis order: auto (NHWC when the last axis has 1, 3
    /// or 4 entries and the second does not), nchw or nhwc. NHWC models are
    /// fed through a transpose: data, budgets and gradients stay NCHW.
    #[arg(long, value_name = "LAYOUT", default_value = "auto")]
    layout: String,
    /// Per-channel MEAN:STD folded into the graph, e.g. 0.4914,0.4822,0.4465:0.2470,0.2435,0.2616.
    #[arg(long, value_name = "MEAN:STD")]
    normalize: Option<String>,
    /// The image input, when the model has several.
    #[arg(long, value_name = "NAME")]
    input: Option<String>,
    /// The logits output, when the model has several.
    #[arg(long, value_name = "NAME")]
    output: Option<String>,
    /// Same seed, model and data give an identical report.csv (timings aside).
    #[arg(long, default_value_t = 0, value_parser = upat::cli::seed)]
    seed: u64,
    /// Report directory.
    #[arg(long, value_name = "DIR", default_value = "audit-report")]
    out: PathBuf,
    /// Source model of the transfer (blackbox) attacks; repeatable.
    #[arg(long = "source", value_name = "MODEL.onnx")]
    sources: Vec<PathBuf>,
    /// Fail (exit 1) when ATTACK_ID's robust accuracy is below ACC; repeatable.
    #[arg(long = "fail-under", value_name = "ATTACK_ID=ACC")]
    fail_under: Vec<String>,
    /// Also write samples.csv: one row per model, attack, source and sample.
    #[arg(long)]
    per_sample: bool,
    /// Exit 1 when a gradient-masking flag is raised (flags.csv), as for a failed gate.
    #[arg(long)]
    fail_on_flags: bool,
    /// Also write the gates and flags as JUnit XML (one test case per gate
    /// and model, and per flag), for CI test reporters. When
    /// GITHUB_STEP_SUMMARY is set, report.md is appended to it.
    #[arg(long, value_name = "FILE.xml")]
    junit: Option<PathBuf>,
    /// Continue the audit in --out that a killed run left: the (model, attack)
    /// rows it finished (journal/) are kept, the rest run. Same arguments required.
    #[arg(long)]
    resume: bool,
    /// Audit only shard K of N of the samples (after --samples), for `merge`:
    /// K/N, or auto (a Slurm job array's task) or auto/N (also a Kubernetes
    /// Indexed Job's JOB_COMPLETION_INDEX). Implies --per-sample.
    #[arg(long, value_name = "K/N|auto[/N]")]
    shard: Option<String>,
}

/// How image collections (imagefolder:, images:) are read.
#[derive(Debug, Args)]
struct ImageArgs {
    /// Preprocessing of imagefolder:/images: data, as torchvision does it on
    /// PIL images (the forms are added from the library at start-up).
    #[arg(long, value_name = "SPEC")]
    transform: Option<String>,
    /// Class names in index order, one per line, for imagefolder:/images:
    /// data (default: the sorted folder or label names).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Skip images that cannot be read or decoded (named in report.md and
    /// counted) instead of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
}

impl ImageArgs {
    /// The options, refused for data that is not an image collection.
    fn options(&self, data: &DataSpec) -> upat::Result<ImageOptions> {
        let given = self.transform.is_some() || self.classes.is_some() || self.skip_bad_images;
        if given && !data.is_image_collection() {
            return Err(upat::Error::Usage(
                "--transform, --classes and --skip-bad-images apply to imagefolder:DIR and images:LIST data".into(),
            ));
        }
        ImageOptions::new(self.transform.as_deref(), self.classes.clone())
    }
}

/// Loads `--data` (the split a test set names) for an audit or `prepare`:
/// the first `samples`, and image collections listed, not yet decoded.
fn load_data(spec: &DataSpec, options: &ImageOptions, samples: Option<usize>) -> Result<Dataset> {
    let mut data = spec
        .load_with(Split::Test, options)
        .context("cannot load the test data")?;
    if let Some(n) = samples {
        if n > data.len() {
            eprintln!(
                "--samples {n}: the test split has only {} samples; auditing all of them",
                data.len()
            );
        }
        data.truncate(n);
    }
    Ok(data)
}

/// Decodes an image collection's samples once; with `skip_bad`, the ones
/// that fail are dropped and described (for report.md), else the first
/// stops the run.
/// Returns the warning for report.md and the skipped samples' ids.
fn prepare_images(data: &mut Dataset, skip_bad: bool) -> Result<(Option<String>, Vec<u64>)> {
    let bad = data.prepare(skip_bad)?;
    if bad.is_empty() {
        return Ok((None, Vec::new()));
    }
    const LISTED: usize = 20;
    let mut text = format!(
        "{} image(s) could not be used and were skipped (--skip-bad-images): ",
        bad.len()
    );
    let named: Vec<String> = bad
        .iter()
        .take(LISTED)
        .map(|b| format!("sample {} ({}): {}", b.id, b.name, b.why))
        .collect();
    text.push_str(&named.join("; "));
    if bad.len() > LISTED {
        text.push_str(&format!("; and {} more", bad.len() - LISTED));
    }
    eprintln!("warning: {text}");
    Ok((Some(text), bad.iter().map(|b| b.id).collect()))
}

/// Validated audit arguments.
struct AuditConfig {
    plan: AuditPlan,
    data: DataSpec,
    images: ImageOptions,
    skip_bad_images: bool,
    samples: Option<usize>,
    out: PathBuf,
    per_sample: bool,
    fail_on_flags: bool,
    junit: Option<PathBuf>,
    resume: bool,
    shard: Option<Shard>,
    /// Which device runs, and why (for `--device auto`).
    device_line: String,
}

impl TryFrom<AuditArgs> for AuditConfig {
    type Error = upat::Error;

    fn try_from(args: AuditArgs) -> upat::Result<Self> {
        if args.models.is_empty() {
            return Err(upat::Error::Usage(
                "no model given: upat-audit MODEL.onnx... --data SPEC (see --help)".into(),
            ));
        }
        let data = args.data.as_deref().ok_or_else(|| {
            upat::Error::Usage(format!(
                "--data SPEC is required: {}",
                upat::data::DATA_FORMS
            ))
        })?;
        let data: DataSpec = data.parse()?;
        let images = args.images.options(&data)?;
        if args.samples == Some(0) {
            return Err(upat::Error::Usage("--samples must be at least 1".into()));
        }
        let suites = args
            .suites
            .iter()
            .map(|s| Suite::resolve(s))
            .collect::<upat::Result<Vec<_>>>()?;
        let gates = args
            .fail_under
            .iter()
            .map(|g| g.parse::<Gate>())
            .collect::<upat::Result<Vec<_>>>()?;
        let normalization = args
            .normalize
            .as_deref()
            .map(str::parse::<Normalization>)
            .transpose()?;
        let (device, device_line) = resolve_device(args.device, args.backend);
        let plan = AuditPlan::new(AuditRequest {
            models: args.models,
            sources: args.sources,
            suites,
            gates,
            runtime: RuntimeOptions {
                backend: args.backend,
                device,
                threads: args.threads,
            },
            normalization,
            layout: args.layout.parse()?,
            input: args.input,
            output: args.output,
            batch_size: args.batch_size,
            seed: args.seed,
        })?;
        Ok(AuditConfig {
            plan,
            data,
            images,
            skip_bad_images: args.images.skip_bad_images,
            samples: args.samples,
            out: args.out,
            per_sample: args.per_sample,
            fail_on_flags: args.fail_on_flags,
            junit: args.junit,
            resume: args.resume,
            shard: args
                .shard
                .as_deref()
                .map(|s| Shard::parse(s, |name| std::env::var(name).ok()))
                .transpose()?,
            device_line,
        })
    }
}

fn audit(args: AuditArgs) -> Result<ExitCode> {
    let config = AuditConfig::try_from(args)?;
    let backend = resolve_backend(config.plan.runtime());
    match (config.plan.runtime().backend, &backend) {
        (BackendChoice::Auto, Ok(Backend::Tract)) => {
            eprintln!(
                "backend: tract (ONNX Runtime's library was not found: `pip install upat-audit[cpu]` \
                 or `pip install onnxruntime==1.31.1` beside upat-audit adds it; see --backend)"
            )
        }
        (_, Ok(Backend::Ort)) => match upat::runtime::ort_library() {
            Some(library) => eprintln!("backend: ort ({})", library.display()),
            None => eprintln!("backend: ort"),
        },
        (_, Ok(Backend::Tract)) => eprintln!("backend: tract"),
        (_, Err(_)) => {}
    }
    backend?;
    eprintln!("device: {}", config.device_line);
    let mut data = load_data(&config.data, &config.images, config.samples)?;
    eprintln!(
        "data: {} test split, {} samples of {:?}",
        data.name,
        data.len(),
        data.image_shape
    );
    let fingerprint = Fingerprint::of(&config.plan, &data, config.shard)?;
    if let Some(shard) = config.shard {
        let total = data.len();
        data = shard.slice(data)?;
        let first = shard.range(total).start;
        eprintln!(
            "shard {shard}: samples {first}..{} of {total}",
            first + data.len()
        );
    }
    let (skipped, skipped_ids) = prepare_images(&mut data, config.skip_bad_images)?;
    let (mut recorder, start) = Recorder::open(
        &config.out,
        fingerprint,
        config.plan.gates().to_vec(),
        config.resume,
    )?;
    match start {
        Start::Fresh => {}
        Start::Resumed { rows } => eprintln!(
            "resuming the audit in {}: {rows} row(s) finished earlier",
            config.out.display()
        ),
        Start::NothingToResume => eprintln!(
            "--resume: {} holds no audit to resume; starting a new one",
            config.out.display()
        ),
    }
    let mut outcome = run_audit(
        &config.plan,
        &data,
        &mut recorder,
        &mut TerminalProgress::new("samples"),
    )?;
    outcome.warnings.extend(skipped);
    outcome.skipped = skipped_ids;
    let per_sample = config.per_sample || config.shard.is_some();
    recorder.publish(&outcome, per_sample)?;
    let flags = outcome.flag_rows();
    ci_outputs(
        &config.out,
        config.junit.as_deref(),
        &outcome.rows,
        &outcome.gates,
        &flags,
        config.fail_on_flags,
    )?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    for flag in &flags {
        eprintln!("flag: {}: {}: {}", flag.model, flag.flag, flag.detail);
    }
    print_summary(&outcome.rows);
    println!("reports: {}", config.out.join("report.csv").display());
    if per_sample {
        println!("per sample: {}", config.out.join("samples.csv").display());
    }
    let flags_fail = config.fail_on_flags && !flags.is_empty();
    if outcome.gate_failures.is_empty() && !flags_fail {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in &outcome.gate_failures {
        eprintln!("gate failed: {failure}");
    }
    if flags_fail {
        eprintln!(
            "{} gradient-masking flag(s) raised and --fail-on-flags is set (see flags.csv)",
            flags.len()
        );
    }
    Ok(ExitCode::from(1))
}

/// What CI reads besides the exit code: `--junit`'s XML, and report.md
/// appended to GitHub's job summary when `GITHUB_STEP_SUMMARY` names one.
fn ci_outputs(
    out: &std::path::Path,
    junit: Option<&std::path::Path>,
    rows: &[upat::report::ReportRow],
    gates: &[upat::report::GateRow],
    flags: &[upat::report::FlagRow],
    fail_on_flags: bool,
) -> Result<()> {
    if let Some(path) = junit {
        let mut models: Vec<String> = Vec::new();
        for row in rows {
            if !models.contains(&row.model) {
                models.push(row.model.clone());
            }
        }
        let xml = upat::report::junit::junit_xml(gates, flags, &models, fail_on_flags);
        upat::atomic::write_atomic(path, xml.as_bytes())?;
        println!("junit: {}", path.display());
    }
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty()) {
        // A job summary that cannot be written costs the summary, not the audit.
        let appended = std::fs::read(out.join("report.md")).and_then(|report| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&summary)?;
            file.write_all(&report)?;
            file.write_all(b"\n")
        });
        if let Err(e) = appended {
            eprintln!(
                "warning: cannot append report.md to GITHUB_STEP_SUMMARY ({}): {e}",
                std::path::Path::new(&summary).display()
            );
        }
    }
    Ok(())
}

fn merge(
    dirs: Vec<PathBuf>,
    out: PathBuf,
    fail_under: Vec<String>,
    fail_on_flags: bool,
    junit: Option<PathBuf>,
) -> Result<ExitCode> {
    let gates = fail_under
        .iter()
        .map(|g| g.parse::<Gate>())
        .collect::<upat::Result<Vec<_>>>()?;
    let dir = upat::audit::outdir::OutputDir::claim(&out)?;
    dir.remove_results()?;
    let merged = upat::audit::merge(&dirs, gates)?;
    upat::report::write_reports(
        &out,
        &merged.rows,
        Some(&merged.outcomes),
        &merged.flags,
        &merged.verdicts,
        &merged.warnings,
    )?;
    ci_outputs(
        &out,
        junit.as_deref(),
        &merged.rows,
        &merged.verdicts,
        &merged.flags,
        fail_on_flags,
    )?;
    eprintln!(
        "merged {} shards: {} samples",
        dirs.len(),
        merged.fingerprint.samples
    );
    for flag in &merged.flags {
        eprintln!("flag: {}: {}: {}", flag.model, flag.flag, flag.detail);
    }
    print_summary(&merged.rows);
    println!("reports: {}", out.join("report.csv").display());
    let flags_fail = fail_on_flags && !merged.flags.is_empty();
    if merged.gate_failures.is_empty() && !flags_fail {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in &merged.gate_failures {
        eprintln!("gate failed: {failure}");
    }
    if flags_fail {
        eprintln!(
            "{} gradient-masking flag(s) raised and --fail-on-flags is set (see flags.csv)",
            merged.flags.len()
        );
    }
    Ok(ExitCode::from(1))
}

fn print_summary(rows: &[upat::report::ReportRow]) {
    println!(
        "{:<40} {:<24} {:>10} {:>10}",
        "model", "attack", "robust_acc", "±ci95"
    );
    for r in rows {
        println!(
            "{:<40} {:<24} {:>10.4} {:>10.4}",
            r.model, r.attack_id, r.robust_acc, r.robust_acc_ci95
        );
    }
}

fn inspect(model_path: PathBuf, input: Option<String>, output: Option<String>) -> Result<ExitCode> {
    let model = OnnxModel::load(&model_path)?;
    let p = &model.proto;
    println!("model: {}", model.path.display());
    println!("sha256: {}", model.sha256);
    for file in &model.data_files {
        println!("external data: {}", file.display());
    }
    println!(
        "ir_version: {}  opset: {}",
        p.ir_version,
        model.opset().map_or("?".into(), |v| v.to_string())
    );
    println!("producer: {} {}", p.producer_name, p.producer_version);
    println!("inputs:");
    for t in model.inputs() {
        println!("  {}  {}", t.name, t.describe());
    }
    println!("outputs:");
    for t in model.outputs() {
        println!("  {}  {}", t.name, t.describe());
    }
    let metadata = model.metadata();
    if !metadata.is_empty() {
        println!("metadata:");
        for (k, v) in metadata {
            println!("  {k} = {v}");
        }
    }
    let histogram = model.op_histogram();
    println!("ops ({} nodes):", histogram.values().sum::<usize>());
    for (op, count) in &histogram {
        println!("  {op:<24} {count}");
    }
    match ClassifierGraph::prepare(&model, input.as_deref(), output.as_deref(), None) {
        Ok(g) => {
            println!(
                "classifier contract: ok (image input `{}`, logits output `{}`)",
                g.input.model_name(),
                g.output_name
            );
            if g.input.channels_last {
                println!("layout: NHWC (fed NCHW through a transpose; --layout nchw overrides)");
            }
            let verdict = match image_shape_of(&g, None) {
                Ok(shape) => match upat::onnx::grad::build(&g, shape, Loss::Ce) {
                    Ok(_) => "yes: white-box attacks can run".to_string(),
                    Err(e) => format!("no: {e}"),
                },
                Err(_) => {
                    "unknown until the image size is known (upat-audit grad --image-shape C,H,W)"
                        .to_string()
                }
            };
            println!("differentiable: {verdict}");
            Ok(ExitCode::SUCCESS)
        }
        // The description stands; the model cannot be audited: exit 2.
        Err(e) => {
            println!("classifier contract: not met: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// `C,H,W` from the flag, else from the model's declared input.
fn image_shape_of(graph: &ClassifierGraph, flag: Option<&str>) -> upat::Result<[usize; 3]> {
    if let Some(text) = flag {
        let dims: Vec<usize> = text
            .split(',')
            .filter_map(|d| d.trim().parse().ok())
            .collect();
        return <[usize; 3]>::try_from(dims).map_err(|_| {
            upat::Error::Usage(format!(
                "--image-shape {text}: expected three positive integers C,H,W"
            ))
        });
    }
    match graph.input.chw {
        [Some(c), Some(h), Some(w)] => Ok([c, h, w]),
        _ => Err(upat::Error::Usage(
            "the model does not declare its image size; give it with --image-shape C,H,W".into(),
        )),
    }
}

fn grad(
    model: PathBuf,
    loss: Loss,
    out: PathBuf,
    image_shape: Option<String>,
    input: Option<String>,
    output: Option<String>,
) -> Result<ExitCode> {
    let model = OnnxModel::load(&model)?;
    let graph = ClassifierGraph::prepare(&model, input.as_deref(), output.as_deref(), None)?;
    let shape = image_shape_of(&graph, image_shape.as_deref())?;
    let gradient = upat::onnx::grad::build(&graph, shape, loss)?;
    upat::atomic::write_atomic(&out, &upat::onnx::encode(&gradient.proto))?;
    let width = if loss.is_embedding() {
        format!("embedding width {}, `reference` input", gradient.classes)
    } else {
        format!("{} classes", gradient.classes)
    };
    println!(
        "wrote {} ({} loss, input [N,{},{},{}], {width})",
        out.display(),
        loss.as_str(),
        shape[0],
        shape[1],
        shape[2],
    );
    Ok(ExitCode::SUCCESS)
}

/// `upat-audit prepare`: the data as the audit feeds it, to an .npz.
fn prepare(
    data: &str,
    samples: Option<usize>,
    images: &ImageArgs,
    out: &std::path::Path,
) -> Result<ExitCode> {
    let spec: DataSpec = data.parse()?;
    let options = images.options(&spec)?;
    let mut data = load_data(&spec, &options, samples)?;
    prepare_images(&mut data, images.skip_bad_images)?;
    save_npz(out, &data)?;
    println!(
        "wrote {}: {} samples of {:?} (x float32 NCHW in [0, 1], y int64, ids uint64)",
        out.display(),
        data.len(),
        data.image_shape
    );
    Ok(ExitCode::SUCCESS)
}

/// The CLI, with the lists that come from the library: built-in suites and
/// the registry's attack kinds.
fn command() -> clap::Command {
    let suites: Vec<&str> = BUILTIN_SUITES.iter().map(|(name, _)| *name).collect();
    let kinds: String = registry::kinds()
        .iter()
        .map(|(kind, about)| format!("  {kind:<10} {about}\n"))
        .collect();
    Cli::command()
        .mut_arg("data", |a| {
            a.help(format!("Test data: {}", upat::data::DATA_FORMS))
        })
        .mut_arg("transform", |a| {
            a.help(format!(
                "Preprocessing of imagefolder:/images: data, torchvision's on PIL images: {TRANSFORM_FORMS}"
            ))
        })
        .mut_subcommand("prepare", |c| {
            c.mut_arg("data", |a| a.help(format!("The data: {}", upat::data::DATA_FORMS)))
                .mut_arg("transform", |a| {
                    a.help(format!("Preprocessing of imagefolder:/images: data: {TRANSFORM_FORMS}"))
                })
        })
        .mut_arg("suites", |a| {
            a.help(format!(
                "Suite: a built-in ({}) or a suite TOML file; repeatable",
                suites.join(", ")
            ))
        })
        .after_help(format!(
            "Attack kinds a suite may name (docs/suite-format.md):\n{kinds}"
        ))
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Some(Command::Inspect {
            model,
            input,
            output,
        }) => inspect(model, input, output),
        Some(Command::Grad {
            model,
            loss,
            out,
            image_shape,
            input,
            output,
        }) => grad(model, loss, out, image_shape, input, output),
        Some(Command::Merge {
            dirs,
            out,
            fail_under,
            fail_on_flags,
            junit,
        }) => merge(dirs, out, fail_under, fail_on_flags, junit),
        Some(Command::Prepare {
            data,
            samples,
            images,
            out,
        }) => prepare(&data, samples, &images, &out),
        None => audit(cli.audit),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn help_lists_every_registered_kind_and_builtin_suite() {
        let help = command().render_long_help().to_string();
        for (kind, _) in registry::kinds() {
            assert!(
                help.contains(&format!("  {kind} ")),
                "{kind} missing from:\n{help}"
            );
        }
        for (suite, _) in BUILTIN_SUITES {
            assert!(help.contains(suite), "{suite} missing from:\n{help}");
        }
    }

    #[test]
    fn inspect_subcommand_and_audit_args_both_parse() {
        let cli = Cli::try_parse_from(["upat-audit", "inspect", "m.onnx"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Inspect { .. })));
        let cli = Cli::try_parse_from([
            "upat-audit",
            "a.onnx",
            "b.onnx",
            "--data",
            "npz:x.npz",
            "--suite",
            "smoke",
        ])
        .unwrap();
        assert_eq!(cli.audit.models.len(), 2);
        let cli = Cli::try_parse_from(["upat-audit", "a.onnx"]).unwrap();
        let err = AuditConfig::try_from(cli.audit)
            .err()
            .expect("--data is required");
        assert!(err.to_string().contains("--data"), "{err}");
    }
}
