//! The arithmetic of upat's own gradient kernels, shared by the backends
//! that run them (ONNX Runtime: `ort_ops`; tract: `tract_ops`), which only
//! check shapes and hand over slices.

/// ReLU's backward: `g` where x > 0, else 0 (as `Where(Greater(x, 0), g, 0)`
/// computes it, NaN x and infinite g included).
pub fn relu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    for ((d, &xi), &gi) in dx.iter_mut().zip(x).zip(g) {
        *d = if xi > 0.0 { gi } else { 0.0 };
    }
}

/// The forward 2×2, stride-2 MaxPool of one `[h, w]` plane into `y`
/// (`[h / 2, w / 2]`, a last odd row or column dropped), as tract computes
/// it: `f32::MIN.max(cell)` over the window's cells in row order (NaN never
/// taken; f32::MIN where no cell is above it).
pub fn max_pool_2x2(x: &[f32], (h, w): (usize, usize), y: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    for (r, out) in y.chunks_exact_mut(ow.max(1)).take(oh).enumerate() {
        let (top, bottom) = (
            &x[2 * r * w..(2 * r + 1) * w],
            &x[(2 * r + 1) * w..(2 * r + 2) * w],
        );
        for (c, cell) in out.iter_mut().enumerate() {
            *cell = [top[2 * c], top[2 * c + 1], bottom[2 * c], bottom[2 * c + 1]]
                .into_iter()
                .fold(f32::MIN, f32::max);
        }
    }
}

/// A 2-D pooling window's geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    /// Top, left, bottom, right.
    pads: Vec<i64>,
    dilations: Vec<i64>,
}

impl Window {
    /// The geometry MaxPool's attributes give, checked: two values each for
    /// the kernel, strides and dilations (positive) and four for the pads
    /// (non-negative).
    pub fn new(
        kernel: Vec<i64>,
        strides: Vec<i64>,
        pads: Vec<i64>,
        dilations: Vec<i64>,
    ) -> Result<Self, String> {
        for (name, values, len, least) in [
            ("kernel_shape", &kernel, 2, 1),
            ("strides", &strides, 2, 1),
            ("pads", &pads, 4, 0),
            ("dilations", &dilations, 2, 1),
        ] {
            if values.len() != len || values.iter().any(|&v| v < least) {
                return Err(format!(
                    "MaxPoolGrad: `{name}` must hold {len} values of at least {least}, not {values:?}"
                ));
            }
        }
        Ok(Window {
            kernel,
            strides,
            pads,
            dilations,
        })
    }

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
pub struct Windows {
    rows: Vec<Vec<usize>>,
    columns: Vec<Vec<usize>>,
    /// The input plane's width.
    width: usize,
    /// Whether every window is the 2×2 block at (2·oh, 2·ow): the common
    /// `MaxPool(kernel 2, stride 2)`, worth a loop of its own.
    tiled_2x2: bool,
}

impl Windows {
    pub fn new(window: &Window, (h, w): (i64, i64), (oh, ow): (i64, i64)) -> Self {
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
    pub fn backward(&self, x: &[f32], g: &[f32], dx: &mut [f32]) {
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
