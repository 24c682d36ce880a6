//! upat's own ONNX Runtime kernels (domain `ai.upat`), registered with
//! every CPU session: gradient steps that ONNX Runtime's standard ops run
//! on slow paths (`onnx::grad::specialise`).
//!
//! A kernel runs inside ONNX Runtime's call, so it must never panic: every
//! shape is checked and a mismatch is returned as an error.

use crate::onnx::grad::specialise::{MAX_POOL_GRAD, RELU_GRAD, UPAT_DOMAIN};
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

/// The `ai.upat` domain with every upat kernel.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(UPAT_DOMAIN)?
        .add(MaxPoolGrad)?
        .add(ReluGrad)
}

/// Every upat kernel reads two float tensors (a forward input and a
/// gradient) and writes one.
const TWO_FLOAT_INPUTS: [OperatorInput; 2] = [
    OperatorInput::required(TensorElementType::Float32),
    OperatorInput::required(TensorElementType::Float32),
];

/// A mutable output buffer shared with ONNX Runtime's worker threads,
/// each of which writes only its own part of it.
struct Shared(*mut f32);
// SAFETY: the parts written by different tasks are disjoint, and the
// buffer outlives `par_for`, which returns after every task.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `ReluGrad(x, g) → dx`: `g` where x > 0, else 0 (ReLU's backward, as
/// `Where(Greater(x, 0), g, 0)` computes it, NaN x included), for `x` and
/// `g` of one shape.
struct ReluGrad;

/// Elements per task of `ReluGrad`.
const RELU_CHUNK: usize = 1 << 15;

impl Operator for ReluGrad {
    type Kernel<'attr> = ReluGradKernel;

    fn name(&self) -> &str {
        RELU_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        TWO_FLOAT_INPUTS
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<ReluGradKernel> {
        Ok(ReluGradKernel)
    }
}

struct ReluGradKernel;

impl Kernel for ReluGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = || ort::Error::new("ReluGrad: missing input");
        let x_value = ctx.input(0)?.ok_or_else(missing)?;
        let g_value = ctx.input(1)?.ok_or_else(missing)?;
        let (x_shape, x) = x_value.try_extract_tensor::<f32>()?;
        let (g_shape, g) = g_value.try_extract_tensor::<f32>()?;
        if x_shape.to_vec() != g_shape.to_vec() || x.len() != g.len() {
            return Err(ort::Error::new(format!(
                "ReluGrad: input {x_shape} and gradient {g_shape} must have one shape"
            )));
        }
        let mut out = ctx
            .output(0, x_shape.to_vec())?
            .ok_or_else(|| ort::Error::new("ReluGrad: no output"))?;
        let (_, dx) = out.try_extract_tensor_mut::<f32>()?;
        if dx.len() != x.len() {
            return Err(ort::Error::new("ReluGrad: output of the wrong size"));
        }
        let len = x.len();
        let base = Shared(dx.as_mut_ptr());
        let chunks = len.div_ceil(RELU_CHUNK);
        ctx.par_for(chunks, chunks, |k| {
            let base = &base;
            let range = k * RELU_CHUNK..((k + 1) * RELU_CHUNK).min(len);
            // SAFETY: chunk `k` of `dx` is written by this task only, and
            // lies inside the buffer of `len` values.
            let dx =
                unsafe { std::slice::from_raw_parts_mut(base.0.add(range.start), range.len()) };
            relu_backward(&x[range.clone()], &g[range], dx);
        })
    }
}

fn relu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    for ((d, &xi), &gi) in dx.iter_mut().zip(x).zip(g) {
        *d = if xi > 0.0 { gi } else { 0.0 };
    }
}

/// `MaxPoolGrad(x, g) → dx`: for a 2-D MaxPool of input `x` [N, C, H, W]
/// and output gradient `g` [N, C, OH, OW], adds each `g` to the first
/// maximal cell of its window (scanning rows, then columns, as ONNX
/// Runtime's MaxPool picks its index); windows past the padding are
/// skipped. Attributes: `kernel_shape`, `strides`, `pads`, `dilations`.
struct MaxPoolGrad;

impl Operator for MaxPoolGrad {
    type Kernel<'attr> = MaxPoolGradKernel;

    fn name(&self) -> &str {
        MAX_POOL_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        TWO_FLOAT_INPUTS
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<MaxPoolGradKernel> {
        let read = |name: &str, len: usize| -> ort::Result<Vec<i64>> {
            let values: Vec<i64> = info
                .get(name)
                .ok_or_else(|| ort::Error::new(format!("MaxPoolGrad needs `{name}`")))?;
            if values.len() != len || values.iter().any(|&v| v < 0) {
                return Err(ort::Error::new(format!(
                    "MaxPoolGrad: `{name}` must hold {len} non-negative values, not {values:?}"
                )));
            }
            Ok(values)
        };
        let window = Window {
            kernel: read("kernel_shape", 2)?,
            strides: read("strides", 2)?,
            pads: read("pads", 4)?,
            dilations: read("dilations", 2)?,
        };
        if window.kernel.contains(&0)
            || window.strides.contains(&0)
            || window.dilations.contains(&0)
        {
            return Err(ort::Error::new(
                "MaxPoolGrad: kernel, strides and dilations must be positive",
            ));
        }
        Ok(MaxPoolGradKernel { window })
    }
}

/// A 2-D pooling window's geometry.
#[derive(Debug, Clone)]
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    /// Top, left, bottom, right.
    pads: Vec<i64>,
    dilations: Vec<i64>,
}

impl Window {
    /// Per output row (axis 0) or column (axis 1), the input rows or
    /// columns its windows cover inside a plane of `size`, in order.
    fn spans(&self, axis: usize, outputs: i64, size: i64) -> Vec<Vec<usize>> {
        (0..outputs)
            .map(|o| {
                let first = o * self.strides[axis] - self.pads[axis];
                (0..self.kernel[axis])
                    .map(|i| first + i * self.dilations[axis])
                    .filter(|&at| (0..size).contains(&at))
                    .map(|at| at as usize)
                    .collect()
            })
            .collect()
    }
}

/// The windows of every output of a plane: their rows and columns.
struct Windows {
    rows: Vec<Vec<usize>>,
    columns: Vec<Vec<usize>>,
    /// The input plane's width.
    width: usize,
    /// Whether every window is the 2×2 block at (2·oh, 2·ow): the common
    /// `MaxPool(kernel 2, stride 2)`, worth a loop of its own.
    tiled_2x2: bool,
}

impl Windows {
    fn new(window: &Window, (h, w): (i64, i64), (oh, ow): (i64, i64)) -> Self {
        let (rows, columns) = (window.spans(0, oh, h), window.spans(1, ow, w));
        let tiled = |spans: &[Vec<usize>]| {
            spans
                .iter()
                .enumerate()
                .all(|(o, span)| span[..] == [2 * o, 2 * o + 1])
        };
        Windows {
            tiled_2x2: tiled(&rows) && tiled(&columns),
            rows,
            columns,
            width: w as usize,
        }
    }

    /// One plane's gradient: `dx` (zeroed here) gets each `g` at its
    /// window's first maximum of `x`, rows scanned before columns. A window
    /// with no cell above f32::MIN (all NaN or −∞) passes no gradient, as
    /// ONNX Runtime's MaxPool gives it no valid index.
    fn backward(&self, x: &[f32], g: &[f32], dx: &mut [f32]) {
        dx.fill(0.0);
        if self.tiled_2x2 {
            self.backward_2x2(x, g, dx);
        } else {
            self.backward_any(x, g, dx);
        }
    }

    fn backward_any(&self, x: &[f32], g: &[f32], dx: &mut [f32]) {
        let mut grads = g.iter();
        for rows in &self.rows {
            for columns in &self.columns {
                let Some(&grad) = grads.next() else {
                    return;
                };
                let mut best = f32::MIN;
                let mut at = usize::MAX;
                for &r in rows {
                    let row = &x[r * self.width..(r + 1) * self.width];
                    for &c in columns {
                        if row[c] > best {
                            best = row[c];
                            at = r * self.width + c;
                        }
                    }
                }
                if at != usize::MAX {
                    dx[at] += grad;
                }
            }
        }
    }

    fn backward_2x2(&self, x: &[f32], g: &[f32], dx: &mut [f32]) {
        let (w, columns) = (self.width, self.columns.len());
        for (oh, grads) in g.chunks_exact(columns).enumerate() {
            let top = 2 * oh * w;
            for (ow, &grad) in grads.iter().enumerate() {
                let cells = [
                    top + 2 * ow,
                    top + 2 * ow + 1,
                    top + w + 2 * ow,
                    top + w + 2 * ow + 1,
                ];
                let mut best = f32::MIN;
                let mut at = usize::MAX;
                for cell in cells {
                    if x[cell] > best {
                        best = x[cell];
                        at = cell;
                    }
                }
                if at != usize::MAX {
                    dx[at] = grad;
                }
            }
        }
    }
}

struct MaxPoolGradKernel {
    window: Window,
}

impl Kernel for MaxPoolGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = || ort::Error::new("MaxPoolGrad: missing input");
        let x_value = ctx.input(0)?.ok_or_else(missing)?;
        let g_value = ctx.input(1)?.ok_or_else(missing)?;
        let (x_shape, x) = x_value.try_extract_tensor::<f32>()?;
        let (g_shape, g) = g_value.try_extract_tensor::<f32>()?;
        let (xs, gs): (Vec<i64>, Vec<i64>) = (x_shape.to_vec(), g_shape.to_vec());
        if xs.len() != 4
            || gs.len() != 4
            || xs[..2] != gs[..2]
            || xs.iter().chain(&gs).any(|&d| d < 0)
        {
            return Err(ort::Error::new(format!(
                "MaxPoolGrad: input {xs:?} and gradient {gs:?} must be [N, C, H, W] and [N, C, OH, OW]"
            )));
        }
        let planes = (xs[0] * xs[1]) as usize;
        let (plane, g_plane) = ((xs[2] * xs[3]) as usize, (gs[2] * gs[3]) as usize);
        let mut out = ctx
            .output(0, xs.clone())?
            .ok_or_else(|| ort::Error::new("MaxPoolGrad: no output"))?;
        let (_, dx) = out.try_extract_tensor_mut::<f32>()?;
        if planes == 0 || plane == 0 {
            dx.fill(0.0);
            return Ok(());
        }
        let base = Shared(dx.as_mut_ptr());
        let windows = Windows::new(&self.window, (xs[2], xs[3]), (gs[2], gs[3]));
        ctx.par_for(planes, planes, |p| {
            let base = &base;
            // SAFETY: plane `p` of `dx` is written by this task only, and
            // lies inside the buffer of `planes · plane` values.
            let dx = unsafe { std::slice::from_raw_parts_mut(base.0.add(p * plane), plane) };
            windows.backward(
                &x[p * plane..(p + 1) * plane],
                &g[p * g_plane..(p + 1) * g_plane],
                dx,
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_backward_passes_the_gradient_where_x_is_positive_only() {
        let x = [1.0, 0.0, -0.0, -2.0, f32::NAN, 3.0];
        let g = [1.0, 2.0, 3.0, 4.0, 5.0, f32::INFINITY];
        let mut dx = [9.0; 6];
        relu_backward(&x, &g, &mut dx);
        assert_eq!(dx, [1.0, 0.0, 0.0, 0.0, 0.0, f32::INFINITY]);
    }

    #[test]
    fn the_2x2_loop_equals_the_general_one_ties_and_odd_edges_included() {
        let window = Window {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            pads: vec![0; 4],
            dilations: vec![1, 1],
        };
        // 5×7: the last row and column belong to no window; values in
        // steps of 0.5 from a small range, so windows tie often.
        let x: Vec<f32> = (0..35u32).map(|i| ((i * 7919) % 5) as f32 * 0.5).collect();
        let g: Vec<f32> = (1..=6).map(|v| v as f32).collect();
        let windows = Windows::new(&window, (5, 7), (2, 3));
        assert!(windows.tiled_2x2);
        let (mut fast, mut general) = ([0.0; 35], [0.0; 35]);
        windows.backward(&x, &g, &mut fast);
        windows.backward_any(&x, &g, &mut general);
        assert_eq!(fast, general);
        assert_eq!(fast.iter().sum::<f32>(), 21.0);
    }

    #[test]
    fn overlapping_windows_add_and_ties_go_to_the_first_maximum() {
        // 1×4 plane, kernel 1×2, stride 1, no pads: windows (0,1), (1,2), (2,3).
        let window = Window {
            kernel: vec![1, 2],
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
        };
        let x = [1.0, 3.0, 3.0, f32::NEG_INFINITY];
        let g = [10.0, 20.0, 30.0];
        let mut dx = [7.0; 4];
        Windows::new(&window, (1, 4), (1, 3)).backward(&x, &g, &mut dx);
        // Window 1 ties (3, 3): the first; window 2's maximum is cell 2.
        assert_eq!(dx, [0.0, 30.0, 30.0, 0.0]);
    }

    #[test]
    fn padded_dilated_windows_skip_cells_outside_the_plane() {
        // 3×3 plane, kernel 2×2, dilation 2, pad 1 on every side, stride 1.
        let window = Window {
            kernel: vec![2, 2],
            strides: vec![1, 1],
            pads: vec![1; 4],
            dilations: vec![2, 2],
        };
        // Output 0 reads rows and columns −1 and 1: only 1; output 1 reads 0 and 2.
        assert_eq!(window.spans(0, 2, 3), [vec![1], vec![0, 2]]);
        let x = [1.0, 0.0, 2.0, 0.0, 5.0, 0.0, 3.0, 0.0, 4.0];
        let mut dx = [0.0; 9];
        Windows::new(&window, (3, 3), (2, 2)).backward(&x, &[1.0, 2.0, 4.0, 8.0], &mut dx);
        // (0,0) reads cell 4; (0,1) cells 3, 5 and (1,0) cells 1, 7, all
        // 0: the first of each; (1,1) cells 0, 2, 6, 8: the maximum is 8.
        assert_eq!(dx, [0.0, 4.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 8.0]);
    }
}
