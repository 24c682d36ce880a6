//! Tensors stored outside the model file (ONNX "external data").
//!
//! PyTorch's exporter writes `model.onnx` plus `model.onnx.data` by default:
//! each large tensor names a `location` (a file relative to the model's
//! directory), an `offset` and a `length`. [`inline`] reads them into the
//! tensors' `raw_data`, so that everything downstream (both backends, the
//! gradient graph, the rules reading constant indices) sees one
//! self-contained model.
//!
//! The locations come from a possibly hostile file: a location that is
//! absolute, climbs with `..`, resolves (through symlinks) outside the
//! model's directory, is not a regular file, or whose range runs past the
//! file's end is refused, naming the tensor and the path, before any byte
//! of it is read; and every declared size is checked against the memory
//! ceiling before allocating.

use super::pb;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Where one tensor's bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    /// The checked, canonical path of the data file.
    file: PathBuf,
    offset: u64,
    length: u64,
}

/// Whether `tensor` keeps its data in an external file.
fn is_external(tensor: &pb::TensorProto) -> bool {
    tensor.data_location == Some(EXTERNAL) || !tensor.external_data.is_empty()
}

/// Whether any tensor of the model is stored externally.
pub fn uses_external_data(model: &mut pb::ModelProto) -> bool {
    let mut any = false;
    for_each_tensor(model, &mut |t| {
        any |= is_external(t);
        Ok(())
    })
    .expect("the visitor does not fail");
    any
}

/// The data files `model`'s external tensors are stored in, checked like
/// [`inline`] checks them but not read: the files `model_sha256` covers, in
/// the order they are first referenced.
pub fn data_files(model_path: &Path, model: &mut pb::ModelProto) -> Result<Vec<PathBuf>> {
    let dir = model_dir(model_path)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for_each_tensor(model, &mut |tensor| {
        if is_external(tensor) {
            let location = locate(&dir, tensor).map_err(|why| {
                Error::model(
                    model_path,
                    format!("tensor `{}` is stored externally, but {why}", tensor.name),
                )
            })?;
            if !files.contains(&location.file) {
                files.push(location.file);
            }
        }
        Ok(())
    })?;
    Ok(files)
}

/// Reads every external tensor of `model` (loaded from `model_path`) into its
/// `raw_data`. Returns the data files in the order they are first
/// referenced, each once: the files `model_sha256` covers.
pub fn inline(model_path: &Path, model: &mut pb::ModelProto) -> Result<Vec<PathBuf>> {
    let dir = model_dir(model_path)?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut opened: HashMap<PathBuf, (std::fs::File, u64)> = HashMap::new();
    let mut budget = crate::limits::max_bytes()?;
    for_each_tensor(model, &mut |tensor| {
        if !is_external(tensor) {
            return Ok(());
        }
        let refuse = |why: String| {
            Error::model(
                model_path,
                format!("tensor `{}` is stored externally, but {why}", tensor.name),
            )
        };
        let location = locate(&dir, tensor).map_err(refuse)?;
        if !opened.contains_key(&location.file) {
            let file = open_data_file(&location.file).map_err(refuse)?;
            opened.insert(location.file.clone(), file);
            files.push(location.file.clone());
        }
        let (file, size) = opened.get_mut(&location.file).expect("just inserted");
        let end = location.offset.checked_add(location.length);
        if end.is_none_or(|end| end > *size) {
            return Err(refuse(format!(
                "its range (offset {}, length {}) runs past the end of {} ({} bytes); \
                 the data file is truncated or does not belong to this model",
                location.offset,
                location.length,
                location.file.display(),
                size
            )));
        }
        // The whole model, external data included, stays under the ceiling.
        budget = budget.checked_sub(location.length).ok_or_else(|| {
            refuse(format!(
                "the model's external data exceed the memory ceiling of {} (UPAT_MAX_MEMORY)",
                crate::limits::human(crate::limits::max_bytes().unwrap_or(0) as usize)
            ))
        })?;
        let mut bytes = vec![0u8; location.length as usize];
        file.seek(SeekFrom::Start(location.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| refuse(format!("{} cannot be read ({e})", location.file.display())))?;
        tensor.raw_data = bytes;
        tensor.external_data.clear();
        tensor.data_location = None;
        Ok(())
    })?;
    Ok(files)
}

/// The canonical directory external locations are relative to.
fn model_dir(model_path: &Path) -> Result<PathBuf> {
    let parent = match model_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    parent.canonicalize().map_err(|e| Error::io(parent, e))
}

/// The checked location of `tensor`'s bytes (an error says why not).
fn locate(dir: &Path, tensor: &pb::TensorProto) -> std::result::Result<Location, String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for entry in &tensor.external_data {
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("its `{}` is `{value}`, not a byte count", entry.key))
        };
        match entry.key.as_str() {
            "location" => location = Some(entry.value.as_str()),
            "offset" => offset = number(&entry.value)?,
            "length" => length = Some(number(&entry.value)?),
            // `checksum` and unknown keys do not change where the bytes are.
            _ => {}
        }
    }
    let location = location.ok_or("it names no `location`")?;
    let file = checked_path(dir, location)?;
    let expected = expected_bytes(tensor)?;
    if let Some(length) = length {
        if Some(length) != expected && expected.is_some() {
            return Err(format!(
                "its `length` ({length} bytes) disagrees with its type and shape ({} bytes)",
                expected.unwrap_or(0)
            ));
        }
    }
    let length = length
        .or(expected)
        .ok_or("its data type has no fixed size and it gives no `length`")?;
    Ok(Location {
        file,
        offset,
        length,
    })
}

/// `location` joined to `dir`, refused unless it stays inside `dir` once
/// every symlink is resolved.
fn checked_path(dir: &Path, location: &str) -> std::result::Result<PathBuf, String> {
    let shown = location.escape_debug();
    if location.is_empty() || location.contains('\0') {
        return Err(format!("its location `{shown}` is not a file name"));
    }
    let relative = Path::new(location);
    // Windows separators too: a model written there may say `..\x`.
    let climbs = location.split(['/', '\\']).any(|part| part == "..");
    if relative.is_absolute()
        || location.starts_with('\\')
        || relative
            .components()
            .any(|c| matches!(c, Component::Prefix(_)))
    {
        return Err(format!(
            "its location `{shown}` is absolute; external data must sit in the model's directory"
        ));
    }
    if climbs {
        return Err(format!(
            "its location `{shown}` climbs out with `..`; external data must sit in the model's directory"
        ));
    }
    let joined = dir.join(relative);
    let resolved = joined
        .canonicalize()
        .map_err(|e| format!("its data file {} cannot be opened ({e})", joined.display()))?;
    if !resolved.starts_with(dir) {
        return Err(format!(
            "its location `{shown}` resolves to {}, outside the model's directory {} (a symbolic link?)",
            resolved.display(),
            dir.display()
        ));
    }
    Ok(resolved)
}

/// Opens a resolved data file if it is a regular file; with its size.
fn open_data_file(path: &Path) -> std::result::Result<(std::fs::File, u64), String> {
    crate::limits::open_regular(path).map_err(|e| match e {
        Error::Io { error, .. } => format!(
            "its data file {} cannot be opened ({error})",
            path.display()
        ),
        other => other.to_string(),
    })
}

/// Bytes a tensor of this type and shape holds; `None` for strings and
/// unknown types (whose length must be given).
fn expected_bytes(tensor: &pb::TensorProto) -> std::result::Result<Option<u64>, String> {
    let count = tensor.dims.iter().try_fold(1u64, |acc, &d| {
        u64::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| format!("its shape {:?} is not a valid size", tensor.dims))
    })?;
    // (numerator, denominator) bytes per element: 4-bit types pack two.
    let (num, den) = match tensor.data_type {
        2 | 3 | 9 | 17..=20 => (1, 1),
        4 | 5 | 10 | 16 => (2, 1),
        1 | 6 | 12 => (4, 1),
        7 | 11 | 13 | 14 => (8, 1),
        15 => (16, 1),
        21..=23 => (1, 2),
        _ => return Ok(None),
    };
    count
        .checked_mul(num)
        .map(|b| Some(b.div_ceil(den)))
        .ok_or_else(|| format!("its shape {:?} is too large", tensor.dims))
}

/// Calls `f` on every tensor of the model: initializers, sparse
/// initializers, node attributes, in subgraphs and functions too.
fn for_each_tensor(
    model: &mut pb::ModelProto,
    f: &mut dyn FnMut(&mut pb::TensorProto) -> Result<()>,
) -> Result<()> {
    if let Some(graph) = model.graph.as_mut() {
        graph_tensors(graph, f)?;
    }
    for function in &mut model.functions {
        for node in &mut function.node {
            node_tensors(node, f)?;
        }
    }
    Ok(())
}

fn graph_tensors(
    graph: &mut pb::GraphProto,
    f: &mut dyn FnMut(&mut pb::TensorProto) -> Result<()>,
) -> Result<()> {
    for tensor in &mut graph.initializer {
        f(tensor)?;
    }
    for sparse in &mut graph.sparse_initializer {
        sparse_tensors(sparse, f)?;
    }
    for node in &mut graph.node {
        node_tensors(node, f)?;
    }
    Ok(())
}

fn node_tensors(
    node: &mut pb::NodeProto,
    f: &mut dyn FnMut(&mut pb::TensorProto) -> Result<()>,
) -> Result<()> {
    for attribute in &mut node.attribute {
        if let Some(t) = attribute.t.as_mut() {
            f(t)?;
        }
        for t in &mut attribute.tensors {
            f(t)?;
        }
        if let Some(s) = attribute.sparse_tensor.as_mut() {
            sparse_tensors(s, f)?;
        }
        for s in &mut attribute.sparse_tensors {
            sparse_tensors(s, f)?;
        }
        if let Some(g) = attribute.g.as_mut() {
            graph_tensors(g, f)?;
        }
        for g in &mut attribute.graphs {
            graph_tensors(g, f)?;
        }
    }
    Ok(())
}

fn sparse_tensors(
    sparse: &mut pb::SparseTensorProto,
    f: &mut dyn FnMut(&mut pb::TensorProto) -> Result<()>,
) -> Result<()> {
    for t in sparse.values.iter_mut().chain(sparse.indices.iter_mut()) {
        f(t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose one initializer `w` (float [2,2]) is stored at
    /// `location` with the given external entries.
    fn model_with(entries: &[(&str, &str)]) -> pb::ModelProto {
        let tensor = pb::TensorProto {
            name: "w".into(),
            dims: vec![2, 2],
            data_type: 1,
            data_location: Some(EXTERNAL),
            external_data: entries
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        };
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                initializer: vec![tensor],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A model directory holding `m.onnx`'s data file `m.data`: 8 bytes of
    /// padding, then the four floats 1..4.
    fn model_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0xEE; 8];
        data.extend(floats(&[1.0, 2.0, 3.0, 4.0]));
        std::fs::write(dir.path().join("m.data"), data).unwrap();
        let model = dir.path().join("m.onnx");
        (dir, model)
    }

    fn refusal(model: &Path, entries: &[(&str, &str)]) -> String {
        let err = inline(model, &mut model_with(entries))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`w`"), "names the tensor: {err}");
        err
    }

    #[test]
    fn reads_the_declared_range_into_raw_data() {
        let (_dir, model) = model_dir();
        let mut proto = model_with(&[("location", "m.data"), ("offset", "8"), ("length", "16")]);
        let files = inline(&model, &mut proto).unwrap();
        let w = &proto.graph.unwrap().initializer[0];
        assert_eq!(w.raw_data, floats(&[1.0, 2.0, 3.0, 4.0]));
        assert!(w.external_data.is_empty() && w.data_location.is_none());
        assert_eq!(files.len(), 1);
        assert!(files[0].ends_with("m.data"));
        // Without `length`, the type and shape say how much to read.
        let mut proto = model_with(&[("location", "m.data"), ("offset", "8")]);
        inline(&model, &mut proto).unwrap();
        assert_eq!(
            proto.graph.unwrap().initializer[0].raw_data,
            floats(&[1.0, 2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn hostile_locations_are_refused_before_reading() {
        let (dir, model) = model_dir();
        let err = refusal(&model, &[("location", "/etc/passwd")]);
        assert!(err.contains("absolute"), "{err}");
        let err = refusal(&model, &[("location", "../m.data")]);
        assert!(err.contains("climbs"), "{err}");
        let err = refusal(&model, &[("location", "sub/..\\..\\m.data")]);
        assert!(err.contains("climbs"), "{err}");
        let err = refusal(&model, &[("location", "")]);
        assert!(err.contains("not a file name"), "{err}");
        let err = refusal(&model, &[("offset", "8")]);
        assert!(err.contains("no `location`"), "{err}");
        // A link inside the directory to a file outside it.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), [0u8; 16]).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let err = refusal(&model, &[("location", "link")]);
        assert!(err.contains("outside the model's directory"), "{err}");
        // A link inside the directory to a file inside it is fine.
        std::os::unix::fs::symlink(dir.path().join("m.data"), dir.path().join("alias")).unwrap();
        inline(
            &model,
            &mut model_with(&[("location", "alias"), ("offset", "8")]),
        )
        .unwrap();
        // Ranges past the end, and lengths the shape contradicts.
        let err = refusal(&model, &[("location", "m.data"), ("offset", "16")]);
        assert!(err.contains("past the end"), "{err}");
        let err = refusal(
            &model,
            &[("location", "m.data"), ("offset", "18446744073709551615")],
        );
        assert!(err.contains("past the end"), "{err}");
        let err = refusal(&model, &[("location", "m.data"), ("length", "12")]);
        assert!(err.contains("disagrees"), "{err}");
        let err = refusal(&model, &[("location", "m.data"), ("offset", "-1")]);
        assert!(err.contains("not a byte count"), "{err}");
        let err = refusal(&model, &[("location", "missing.data")]);
        assert!(err.contains("cannot be opened"), "{err}");
        // A directory and a FIFO are not data files (a FIFO would block).
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let err = refusal(&model, &[("location", "d")]);
        assert!(err.contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = refusal(&model, &[("location", "fifo")]);
            assert!(err.contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn a_huge_declared_shape_is_refused_without_allocating() {
        let (_dir, model) = model_dir();
        let mut proto = model_with(&[("location", "m.data")]);
        proto.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 20];
        let err = inline(&model, &mut proto).unwrap_err().to_string();
        assert!(
            err.contains("too large") || err.contains("past the end"),
            "{err}"
        );
        let mut proto = model_with(&[("location", "m.data")]);
        proto.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 30];
        let err = inline(&model, &mut proto).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
    }

    /// A Constant node inside an If branch, its tensor stored externally.
    #[test]
    fn tensors_in_subgraph_attributes_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<u8> = [5.0f32, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("w.bin"), &values).unwrap();
        let external = pb::TensorProto {
            name: "c".into(),
            dims: vec![2],
            data_type: 1,
            data_location: Some(EXTERNAL),
            external_data: vec![pb::StringStringEntryProto {
                key: "location".into(),
                value: "w.bin".into(),
            }],
            ..Default::default()
        };
        let constant = pb::NodeProto {
            op_type: "Constant".into(),
            output: vec!["c".into()],
            attribute: vec![pb::AttributeProto {
                name: "value".into(),
                t: Some(external),
                ..Default::default()
            }],
            ..Default::default()
        };
        let branch = pb::GraphProto {
            node: vec![constant],
            ..Default::default()
        };
        let if_node = pb::NodeProto {
            op_type: "If".into(),
            attribute: vec![pb::AttributeProto {
                name: "then_branch".into(),
                g: Some(branch),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut model = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![if_node],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(uses_external_data(&mut model));
        let files = inline(&dir.path().join("m.onnx"), &mut model).unwrap();
        assert_eq!(files.len(), 1);
        assert!(!uses_external_data(&mut model));
        let graph = model.graph.unwrap();
        let tensor = graph.node[0].attribute[0].g.as_ref().unwrap().node[0].attribute[0]
            .t
            .clone()
            .unwrap();
        assert_eq!(tensor.raw_data, values);
    }
}
