//! The ONNX Runtime backend. The shared library is loaded at run time
//! (`load-dynamic`), found in this order:
//! 1. `ORT_DYLIB_PATH` (if it is set and does not load, that is an error);
//! 2. places relative to the executable (its symbolic links resolved),
//!    nothing compiled in: the Python environment it was installed into
//!    (`PREFIX/bin/upat-audit` beside `PREFIX/lib/python3.X/site-packages`:
//!    a venv, `pip install --user`, pipx, `uv tool`), the library beside
//!    the executable, and the `.venv` of the checkout it was built in
//!    (`ROOT/target/<profile>/...`);
//! 3. the Python environment the user names: `$VIRTUAL_ENV` (an activated
//!    venv), or the `onnxruntime` package of `$UPAT_PYTHON` or of the
//!    `python3` on `PATH` (absolute `PATH` entries only), run isolated
//!    (`-I`: neither the current directory nor `PYTHON*` variables reach
//!    its import path) from `/`.
//!
//! Never the current directory: running upat-audit inside an untrusted
//! checkout must not load that checkout's code. The library loaded is named
//! on stderr (`backend: ort (...)`).

use super::{Device, Feed, Fetched, Session};
use crate::error::{Error, Result};
use crate::onnx::{encode, pb};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn ort_error(message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "ort",
        message: without_source_locations(&message.into()),
    }
}

/// ONNX Runtime's messages carry the C++ source location and function
/// signature they were raised in (`/onnxruntime_src/...cc:256 void*
/// onnxruntime::X::Y(size_t, ...) Failed to ...`): what the user needs is
/// the sentence after them.
fn without_source_locations(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("/onnxruntime_src/") {
        out.push_str(&rest[..at]);
        let location = &rest[at..];
        // The location runs to the end of the first `)` that closes the
        // signature's parameter list, after `file:line`.
        let Some(open) = location.find('(') else {
            rest = "";
            break;
        };
        let mut depth = 0usize;
        let mut end = location.len();
        for (i, c) in location[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = location[end..].trim_start_matches([' ', ']']);
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// The process-wide ONNX Runtime environment, or why it could not be made.
static ENVIRONMENT: OnceLock<
    std::result::Result<(ort::environment::Environment, PathBuf), String>,
> = OnceLock::new();

/// Loads ONNX Runtime once; returns the library path it came from.
pub fn ensure_loaded() -> Result<&'static Path> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        let path = find_library()?;
        let named = if std::env::var_os("ORT_DYLIB_PATH").is_some() {
            " (ORT_DYLIB_PATH)"
        } else {
            ""
        };
        let env = ort::init_from(&path)
            .map_err(|e| format!("cannot load {}{named}: {e}", path.display()))?
            .with_name("upat")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        Ok((env, path))
    });
    match loaded {
        Ok((_, path)) => Ok(path),
        Err(message) => Err(ort_error(message.clone())),
    }
}

fn environment() -> Result<&'static ort::environment::Environment> {
    ensure_loaded()?;
    Ok(&ENVIRONMENT
        .get()
        .expect("initialised")
        .as_ref()
        .expect("loaded")
        .0)
}

/// Finds `libonnxruntime.so*` as the module docs describe.
fn find_library() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(std::fs::canonicalize(&p).unwrap_or(p))
        } else {
            Err(format!("ORT_DYLIB_PATH={} is not a file", p.display()))
        };
    }
    if let Some(found) = library_beside_executable() {
        return Ok(found);
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from) {
        if venv.is_absolute() {
            if let Some(found) = library_in_venv(&venv) {
                return Ok(found);
            }
        }
    }
    if let Some(python) = named_python() {
        if let Some(found) = library_of_python(&python) {
            return Ok(found);
        }
    }
    Err(
        "ONNX Runtime's library was not found: `pip install upat-audit[cpu]` (or \
         onnxruntime==1.31.1 into the Python environment upat-audit is installed in; \
         scripts/setup.sh in a checkout), \
         or set ORT_DYLIB_PATH to libonnxruntime.so, or name a Python that has onnxruntime \
         with UPAT_PYTHON, or use --backend tract"
            .into(),
    )
}

/// `onnxruntime/capi/libonnxruntime.so*` in a Python prefix's packages
/// (a venv, `~/.local`, `/usr/local`): `lib/python3.X/site-packages`, or
/// Debian's `dist-packages`.
fn library_in_venv(prefix: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(prefix.join("lib")).ok()?;
    let mut pythons: Vec<PathBuf> = lib.flatten().map(|e| e.path()).collect();
    pythons.sort();
    pythons.iter().rev().find_map(|python| {
        ["site-packages", "dist-packages"]
            .iter()
            .find_map(|packages| library_in(&python.join(packages).join("onnxruntime")))
    })
}

/// ONNX Runtime where the executable's own installation puts it.
fn library_beside_executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let bin = exe.parent()?;
    // Installed by pip, pipx or uv: PREFIX/bin/upat-audit, with the
    // `onnxruntime` package (the [cpu] or [gpu] extra) in PREFIX's packages.
    if let Some(found) = bin.parent().and_then(library_in_venv) {
        return Some(found);
    }
    if let Some(found) = library_in_dir(bin) {
        return Some(found);
    }
    // Built in a checkout: ROOT/target/<profile>[/deps|/examples]/binary,
    // with the project venv (scripts/setup.sh) at ROOT/.venv.
    bin.ancestors()
        .take(4)
        .find_map(|dir| library_in_venv(&dir.join(".venv")))
}

/// `$UPAT_PYTHON`, else `python3` in an absolute directory of `PATH`.
fn named_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("UPAT_PYTHON") {
        return Some(PathBuf::from(python));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
}

/// The library of `python`'s onnxruntime package, asked in isolated mode
/// from `/`, so that no file of the current directory is imported.
fn library_of_python(python: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new(python)
        .args([
            "-I",
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.is_absolute() {
        library_in(&dir)
    } else {
        None
    }
}

fn library_in(package_dir: &Path) -> Option<PathBuf> {
    library_in_dir(&package_dir.join("capi"))
}

/// The newest `libonnxruntime.so*` in `dir`.
fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
        .collect();
    // The fully versioned name sorts last; prefer it over symlinks.
    candidates.sort();
    candidates.pop()
}

/// A model running on ONNX Runtime.
pub struct OrtSession {
    session: ort::session::Session,
    input_names: Vec<String>,
    device: Device,
}

impl OrtSession {
    /// Creates a session; with `Device::Cuda` the CUDA provider must register
    /// or this fails (never a silent CPU fallback).
    pub fn new(
        proto: &pb::ModelProto,
        device: Device,
        threads: Option<std::num::NonZeroUsize>,
    ) -> Result<Self> {
        let env = environment()?;
        // Errors come back to us as values; ONNX Runtime's own logger would
        // print them a second time, in colour, with C++ locations.
        let mut builder = ort::session::Session::builder(env)
            .map_err(|e| ort_error(format!("session builder: {e}")))?
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(|e| ort_error(format!("session builder: {e}")))?;
        if let Some(threads) = threads {
            // One pool of `threads` for the ops themselves, and ops run one
            // at a time, so that N shards with --threads 1 share N cores.
            let refused = |e: ort::Error<_>| ort_error(format!("--threads {threads}: {e}"));
            builder = builder
                .with_intra_threads(threads.get())
                .map_err(refused)?
                .with_inter_threads(1)
                .map_err(refused)?;
        }
        // Between calls the attack itself computes on the same cores; ONNX
        // Runtime's pool spinning there took it 6-9% longer (AutoAttack ℓ∞,
        // 100 images, adversarially trained CNN: 27.1-28.3 s spinning,
        // 25.8-25.9 s not; same outcomes).
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| ort_error(format!("session options: {e}")))?;
        if device == Device::Cuda {
            builder = with_cuda(builder)?;
        } else {
            let domain = super::ort_ops::domain()
                .map_err(|e| ort_error(format!("registering upat's kernels: {e}")))?;
            builder = builder
                .with_operators(domain)
                .map_err(|e| ort_error(format!("registering upat's kernels: {e}")))?;
        }
        let session = builder.commit_from_memory(&encode(proto)).map_err(|e| {
            ort_error(format!(
                "cannot load the model: {e}. If tract can read it, try --backend tract"
            ))
        })?;
        let input_names = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        Ok(OrtSession {
            session,
            input_names,
            device,
        })
    }
}

fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| {
            let library = ort_library_name();
            ort_error(format!(
                "the CUDA execution provider could not be registered with {library} ({e}); \
                 install onnxruntime-gpu and the CUDA libraries, or use --device cpu",
            ))
        })
}

/// The loaded ONNX Runtime library, for messages.
fn ort_library_name() -> String {
    ensure_loaded().map_or_else(|_| "ONNX Runtime".into(), |p| p.display().to_string())
}

/// Whether ONNX Runtime can run on CUDA here: the CUDA provider registers
/// with a session of a one-node model (its libraries load, a GPU answers).
/// `Err` says why not, in one line.
pub fn cuda_usable() -> std::result::Result<(), String> {
    let probe = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "probe".into(),
            node: vec![pb::NodeProto {
                op_type: "Identity".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![crate::onnx::tensor_value_info("x", 1, &[Some(1)])],
            output: vec![crate::onnx::tensor_value_info("y", 1, &[Some(1)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    OrtSession::new(&probe, Device::Cuda, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Session for OrtSession {
    fn run(&mut self, feeds: &[Feed]) -> Result<Vec<Fetched>> {
        if feeds.len() != self.input_names.len() {
            return Err(ort_error(format!(
                "the model takes {} inputs, {} given",
                self.input_names.len(),
                feeds.len()
            )));
        }
        let mut inputs: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::new();
        for (name, feed) in self.input_names.iter().zip(feeds) {
            let value: ort::value::DynValue = match feed {
                Feed::F32(data, shape) => ort::value::Tensor::from_array((
                    shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                    data.to_vec(),
                ))
                .map(|t| t.into_dyn()),
                Feed::I64(data, shape) => ort::value::Tensor::from_array((
                    shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                    data.to_vec(),
                ))
                .map(|t| t.into_dyn()),
            }
            .map_err(|e| ort_error(format!("cannot build input `{name}`: {e}")))?;
            inputs.push((name.as_str().into(), value.into()));
        }
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| ort_error(format!("inference failed: {e}")))?;
        let mut fetched = Vec::new();
        for (_, value) in outputs.iter() {
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| ort_error(format!("output is not float32: {e}")))?;
            fetched.push(Fetched {
                values: data.to_vec(),
                shape: shape.iter().map(|&d| d as usize).collect(),
            });
        }
        Ok(fetched)
    }

    fn backend_name(&self) -> &'static str {
        "ort"
    }

    fn device(&self) -> Device {
        self.device
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn source_locations_are_cut_from_messages() {
        let raw = "inference failed: Non-zero status code returned while running ConstantOfShape node. Name:'' Status Message: \
                   /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) \
                   Failed to allocate memory for requested buffer of size 14400000000";
        let clean = without_source_locations(raw);
        assert!(
            !clean.contains("onnxruntime_src") && !clean.contains("BFCArena"),
            "{clean}"
        );
        assert!(clean.ends_with("Status Message: Failed to allocate memory for requested buffer of size 14400000000"), "{clean}");
        let load = "cannot load the model: /onnxruntime_src/onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&, const onnxruntime::IOnnxRuntimeOpSchemaRegistryList*, const onnxruntime::logging::Logger&, const onnxruntime::ModelOptions&) Unsupported model IR version: 14, max supported IR version: 13";
        assert_eq!(
            without_source_locations(load),
            "cannot load the model: Unsupported model IR version: 14, max supported IR version: 13"
        );
    }

    /// The Python asked for the library runs isolated, from `/`: a
    /// planted `onnxruntime` package in the current directory is never
    /// imported.
    #[test]
    fn python_is_asked_in_isolated_mode_from_the_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("site/onnxruntime");
        std::fs::create_dir_all(package.join("capi")).unwrap();
        std::fs::write(package.join("capi/libonnxruntime.so.1.2.3"), b"").unwrap();
        let log = dir.path().join("log");
        let python = dir.path().join("python3");
        std::fs::write(
            &python,
            format!(
                "#!/bin/sh\necho \"$(pwd) $1\" > {}\necho {}\n",
                log.display(),
                package.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = library_of_python(&python).unwrap();
        assert_eq!(found, package.join("capi/libonnxruntime.so.1.2.3"));
        assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "/ -I");
    }
}
