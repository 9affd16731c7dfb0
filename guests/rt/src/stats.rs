//! Small statistics helpers for benchmarks.

/// The median of `samples` (sorted in place): the middle element for an odd count, the
/// mean of the two middle elements (rounded down) for an even count, `None` when empty.
pub fn median(samples: &mut [u64]) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        Some(samples[mid])
    } else {
        let (a, b) = (samples[mid - 1], samples[mid]);
        // Overflow-free mean of two values.
        Some(a / 2 + b / 2 + (a % 2 + b % 2) / 2)
    }
}

/// Average cost per iteration of a batch: `total / iterations`, 0 for an empty batch.
pub fn per_iteration(total: u64, iterations: u64) -> u64 {
    total.checked_div(iterations).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [7]), Some(7));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
        assert_eq!(median(&mut [u64::MAX, u64::MAX]), Some(u64::MAX));
        assert_eq!(median(&mut [u64::MAX, u64::MAX - 1]), Some(u64::MAX - 1));
    }

    #[test]
    fn median_ignores_outliers() {
        let mut v = [100, 101, 99, 100, 1_000_000, 98, 102];
        assert_eq!(median(&mut v), Some(100));
    }

    #[test]
    fn per_iteration_average() {
        assert_eq!(per_iteration(2000, 200), 10);
        assert_eq!(per_iteration(2099, 200), 10);
        assert_eq!(per_iteration(5, 0), 0);
    }
}
