//! Label-free figures of an encoder under attack: how far an attacked
//! embedding turned from the clean one (cosine similarity), whether the
//! clean embedding it lies nearest to is still its own sample's nearest,
//! how many of its k nearest clean neighbours it keeps, and their summary
//! per (model, attack): mean, median and 5th percentile of the similarity,
//! the share of samples whose nearest neighbour is stable.
//!
//! A non-finite embedding counts as the worst case (similarity −1, its
//! neighbours lost), as non-finite logits count as misclassified.

/// Norms below this count as this, as in the `cosine` loss head and
/// PyTorch's `cosine_similarity`.
const NORM_FLOOR: f64 = 1e-8;

/// cos(a, b) = a·b / (max(‖a‖, 1e−8) · max(‖b‖, 1e−8)), in f64; −1 where
/// either holds a non-finite value.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    let cos = ab / (aa.sqrt().max(NORM_FLOOR) * bb.sqrt().max(NORM_FLOOR));
    if cos.is_finite() {
        cos.clamp(-1.0, 1.0)
    } else {
        -1.0
    }
}

/// Clean reference embeddings `[n, width]` that queries are compared with
/// by cosine similarity.
pub struct Neighbours<'a> {
    reference: &'a [f32],
    width: usize,
}

impl<'a> Neighbours<'a> {
    pub fn new(reference: &'a [f32], width: usize) -> Self {
        Neighbours { reference, width }
    }

    pub fn len(&self) -> usize {
        self.reference.len() / self.width.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` references most similar to `z`, most similar first (ties to
    /// the lower index), leaving out `exclude` (the query's own sample
    /// where the references are the audited images themselves). Empty
    /// where `z` is not finite.
    pub fn nearest(&self, z: &[f32], k: usize, exclude: Option<usize>) -> Vec<usize> {
        if z.iter().any(|v| !v.is_finite()) {
            return Vec::new();
        }
        let mut scored: Vec<(f64, usize)> = self
            .reference
            .chunks_exact(self.width)
            .enumerate()
            .filter(|&(j, _)| Some(j) != exclude)
            .map(|(j, r)| (cosine_similarity(z, r), j))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().take(k).map(|(_, j)| j).collect()
    }
}

/// One sample's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleFigures {
    /// cos(clean, attacked) of the sample's embeddings.
    pub cos: f64,
    /// Whether the attacked embedding's nearest reference is the clean
    /// embedding's nearest.
    pub nn_stable: bool,
    /// Share of the clean embedding's k nearest references that are also
    /// among the attacked embedding's k nearest.
    pub knn_overlap: f64,
}

/// The figures of one sample from its clean and attacked embeddings; its
/// own position among the references, if it is one, is `exclude`d from its
/// neighbours.
pub fn sample_figures(
    clean: &[f32],
    attacked: &[f32],
    neighbours: &Neighbours,
    k: usize,
    exclude: Option<usize>,
) -> SampleFigures {
    let before = neighbours.nearest(clean, k, exclude);
    let after = neighbours.nearest(attacked, k, exclude);
    let kept = after.iter().filter(|j| before.contains(j)).count();
    SampleFigures {
        cos: cosine_similarity(clean, attacked),
        nn_stable: !before.is_empty() && before.first() == after.first(),
        knn_overlap: if before.is_empty() {
            0.0
        } else {
            kept as f64 / before.len() as f64
        },
    }
}

/// The figures of a (model, attack) row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub cos_mean: f64,
    pub cos_median: f64,
    /// 5th percentile, interpolated linearly between ranks (NumPy's default).
    pub cos_p5: f64,
    /// Share of samples whose nearest neighbour is stable.
    pub nn_stable: f64,
    pub knn_overlap: f64,
}

/// Summarises `samples`; `None` for none.
pub fn summarise(samples: &[SampleFigures]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len() as f64;
    let mut cos: Vec<f64> = samples.iter().map(|s| s.cos).collect();
    cos.sort_by(f64::total_cmp);
    Some(Summary {
        cos_mean: cos.iter().sum::<f64>() / n,
        cos_median: percentile(&cos, 50.0),
        cos_p5: percentile(&cos, 5.0),
        nn_stable: samples.iter().filter(|s| s.nn_stable).count() as f64 / n,
        knn_overlap: samples.iter().map(|s| s.knn_overlap).sum::<f64>() / n,
    })
}

/// The `q`-th percentile of ascending `sorted` (not empty): rank
/// q/100 · (n − 1), linear between the neighbouring values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_similarity_floors_norms_and_treats_non_finite_as_the_worst() {
        assert!((cosine_similarity(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine_similarity(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert!((cosine_similarity(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-12);
        // A zero embedding has similarity 0 to anything, not NaN.
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine_similarity(&[f32::NAN, 1.0], &[1.0, 2.0]), -1.0);
        assert_eq!(cosine_similarity(&[f32::INFINITY, 1.0], &[1.0, 2.0]), -1.0);
    }

    #[test]
    fn nearest_neighbours_leave_out_the_sample_itself_and_break_ties_low() {
        // Directions at 0°, 90°, 45°, 0° (the first's vector: a tie), 180°.
        let reference = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0, 0.0];
        let n = Neighbours::new(&reference, 2);
        assert_eq!(n.len(), 5);
        assert_eq!(n.nearest(&[1.0, 0.1], 3, None), [0, 3, 2]);
        assert_eq!(n.nearest(&[1.0, 0.1], 3, Some(0)), [3, 2, 1]);
        assert_eq!(n.nearest(&[f32::NAN, 0.0], 3, None), Vec::<usize>::new());
    }

    #[test]
    fn a_sample_keeps_its_neighbours_until_it_turns_past_them() {
        let reference = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0];
        let n = Neighbours::new(&reference, 2);
        // Sample 2 (45°), itself left out: its clean nearest is a tie of 0°
        // and 90°, so sample 0. Attacked to 40°, it is still sample 0.
        let kept = sample_figures(&[1.0, 1.0], &[1.0, 0.84], &n, 2, Some(2));
        assert!(kept.nn_stable);
        assert_eq!(kept.knn_overlap, 1.0);
        let expected = 1.84 / (2f64.sqrt() * (1.0f64 + 0.84 * 0.84).sqrt());
        assert!((kept.cos - expected).abs() < 1e-6, "{}", kept.cos);
        // Turned to 100°: nearest is now 90° (sample 1), and 180° joins.
        let lost = sample_figures(&[1.0, 1.0], &[-0.17, 0.98], &n, 2, Some(2));
        assert!(!lost.nn_stable);
        assert_eq!(lost.knn_overlap, 0.5);
        assert!(lost.cos < 0.7);
        // A NaN embedding loses everything.
        let nan = sample_figures(&[1.0, 1.0], &[f32::NAN, 0.0], &n, 2, Some(2));
        assert_eq!(
            (nan.cos, nan.nn_stable, nan.knn_overlap),
            (-1.0, false, 0.0)
        );
    }

    #[test]
    fn summaries_use_numpys_linear_percentiles() {
        let sample = |cos: f64, nn_stable: bool| SampleFigures {
            cos,
            nn_stable,
            knn_overlap: if nn_stable { 1.0 } else { 0.5 },
        };
        let samples: Vec<SampleFigures> = [0.9, 0.1, 0.5, 0.7, 0.3]
            .iter()
            .enumerate()
            .map(|(i, &c)| sample(c, i % 2 == 0))
            .collect();
        let s = summarise(&samples).unwrap();
        assert!((s.cos_mean - 0.5).abs() < 1e-12);
        assert!((s.cos_median - 0.5).abs() < 1e-12);
        // numpy.percentile([0.1, 0.3, 0.5, 0.7, 0.9], 5) = 0.1 + 0.2 · 0.2
        assert!((s.cos_p5 - 0.14).abs() < 1e-12);
        assert!((s.nn_stable - 0.6).abs() < 1e-12);
        assert!((s.knn_overlap - 0.8).abs() < 1e-12);
        assert_eq!(summarise(&[]), None);
        // One sample: every statistic is its value.
        let one = summarise(&[sample(0.25, true)]).unwrap();
        assert_eq!((one.cos_median, one.cos_p5), (0.25, 0.25));
    }
}
