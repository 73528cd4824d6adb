//! The bench's statistics: ratios of mean times, paired by round, with a bootstrap interval.
//!
//! Why the mean: the kernel frees closed sockets in RCU callbacks, which run in bursts (as
//! softirqs on the worker's CPU), so one batch catches more of them than another and the times
//! per batch are bimodal. Measured here with 4 ms batches of the loop and no program: half
//! under 7.1 µs per operation, one in three between 8.5 and 14 µs, mean 8.1 µs. A median, or
//! a per-round ratio of single batches, swings with how many bursts each batch caught; the sum
//! over all rounds counts every operation's share of them once.
use serde::Serialize;

/// Resamples for the bootstrap interval.
const RESAMPLES: usize = 4_000;
/// Fixed: the same batches give the same interval.
const SEED: u64 = 0x75_6470_6775_6172;

/// A setup's mean time per operation over a baseline's, and its 95% interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Ratio {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// `these[i]` and `base[i]` are round i's time per operation of the setup and of the baseline,
/// from batches of the same number of operations. The ratio of their sums is the ratio of the
/// mean times per operation. The interval is a percentile bootstrap over rounds, resampled in
/// pairs so noise both batches of a round shared stays paired.
pub fn ratio_of_means(these: &[f64], base: &[f64]) -> Ratio {
    assert_eq!(these.len(), base.len(), "paired by round");
    assert!(!these.is_empty(), "at least one round");
    let ratio = |rounds: &mut dyn Iterator<Item = usize>| {
        let (mut top, mut bottom) = (0.0, 0.0);
        for round in rounds {
            top += these[round];
            bottom += base[round];
        }
        top / bottom
    };
    let value = ratio(&mut (0..these.len()));
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut resampled: Vec<f64> = (0..RESAMPLES)
        .map(|_| ratio(&mut (0..these.len()).map(|_| rng.usize(..these.len()))))
        .collect();
    resampled.sort_by(f64::total_cmp);
    let at = |q: f64| resampled[((RESAMPLES - 1) as f64 * q).round() as usize];
    Ratio {
        value,
        low: at(0.025),
        high: at(0.975),
    }
}

/// The median of the values (the upper one of an even count's middle two).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The mean of the values.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}
