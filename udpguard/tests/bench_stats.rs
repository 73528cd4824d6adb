//! The connect-cost bench's statistics (pure logic, no kernel needed).
#[path = "../benches/connect_cost/stats.rs"]
mod stats;

use stats::{mean, median, ratio_of_means};

#[test]
fn the_ratio_is_of_the_sums_not_a_mean_or_median_of_per_round_ratios() {
    // Round 2's setup batch caught a burst of deferred work: it counts once, by its size.
    let base = [10.0, 20.0, 10.0, 20.0];
    let these = [10.5, 21.0, 13.5, 21.0];
    let ratio = ratio_of_means(&these, &base);
    // Per-round ratios 1.05, 1.05, 1.35, 1.05: their mean is 1.125, their median 1.05.
    assert!((ratio.value - 66.0 / 60.0).abs() < 1e-12, "{ratio:?}");
    assert!(ratio.low <= ratio.value && ratio.value <= ratio.high);
    // The interval spans what resampled rounds can give: all bursts or none.
    assert!(ratio.low >= 1.05 - 1e-12 && ratio.high <= 1.35 + 1e-12);
    assert!(ratio.low < ratio.value && ratio.value < ratio.high);
}

#[test]
fn identical_rounds_give_an_interval_of_width_zero() {
    let ratio = ratio_of_means(&[12.0; 9], &[10.0; 9]);
    assert_eq!((ratio.value, ratio.low, ratio.high), (1.2, 1.2, 1.2));
}

#[test]
fn noise_both_batches_of_a_round_share_stays_paired() {
    // Every round's machine speed differs, the setup is always 5% slower: the pairs keep the
    // interval tight.
    let base: Vec<f64> = (0..31).map(|i| 8.0 + (i % 7) as f64).collect();
    let these: Vec<f64> = base.iter().map(|b| b * 1.05).collect();
    let ratio = ratio_of_means(&these, &base);
    assert!((ratio.low - 1.05).abs() < 1e-9 && (ratio.high - 1.05).abs() < 1e-9);
}

#[test]
fn the_interval_is_the_same_for_the_same_batches() {
    let base = [7.6, 7.9, 7.7, 8.4, 7.5, 7.8];
    let these = [8.1, 8.6, 8.0, 8.3, 8.4, 8.2];
    assert_eq!(ratio_of_means(&these, &base), ratio_of_means(&these, &base));
}

#[test]
fn mean_and_median() {
    assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
    assert_eq!(median(&[6.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
}
