//! Summary statistics of a benchmark's repeats: median, quartiles and extremes, with numpy's
//! default ("linear") quantile rule, so scripts/bench_torch.py's `numpy.percentile` agrees.

/// Median, quartiles and extremes of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// The statistics of `samples` (all zeros for none).
    pub fn of(samples: &[f64]) -> Stats {
        let mut s: Vec<f64> = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Stats { median: quantile(&s, 0.5), q1: quantile(&s, 0.25), q3: quantile(&s, 0.75), min: quantile(&s, 0.0), max: quantile(&s, 1.0) }
    }
}

/// numpy's linear quantile of sorted `s`: interpolated at position q * (n - 1).
fn quantile(s: &[f64], q: f64) -> f64 {
    match s.len() {
        0 => 0.0,
        n => {
            let pos = q * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_numpy_linear() {
        // numpy.percentile([4, 1, 3, 2], [0, 25, 50, 75, 100]) = 1, 1.75, 2.5, 3.25, 4
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s, Stats { median: 2.5, q1: 1.75, q3: 3.25, min: 1.0, max: 4.0 });
        let one = Stats::of(&[7.0]);
        assert_eq!((one.median, one.q1, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Stats::of(&[]).median, 0.0);
    }
}
