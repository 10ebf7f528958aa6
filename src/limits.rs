//! Range checks for the numbers a user configures (durations, batch and unit sizes), one place
//! for the bounds and their messages (a bottom module: imports nothing from rcaflow). Issue 16:
//! `interval_secs = 1e300` panicked in `Duration::from_secs_f64`; absurd sizes asked for
//! allocations of hundreds of gigabytes. A value out of range is refused before anything runs,
//! with a message naming the setting, the value and the range.

use std::time::Duration;

/// Longest duration a setting may have: 30 days (a checkpoint interval, a shutdown deadline or a
/// live-FID interval beyond that is a typo, and `f64` seconds far beyond overflow `Duration`).
pub const MAX_SECONDS: f64 = 30.0 * 86_400.0;
/// Most images in one batch (a 299x299 float batch of this size is 4 GB already).
pub const MAX_BATCH_SIZE: usize = 4096;
/// Most images in one unit (a unit is also one model batch of a sampler).
pub const MAX_UNIT_SIZE: usize = 4096;

/// `value` seconds as a [`Duration`]: positive, finite and at most [`MAX_SECONDS`].
pub fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    if !(value.is_finite() && value > 0.0 && value <= MAX_SECONDS) {
        // 1e300 as written, not as 301 digits.
        let shown = if value.abs() >= 1e9 { format!("{value:e}") } else { value.to_string() };
        return Err(format!("{name} must be a positive number of seconds up to {MAX_SECONDS} (30 days), found {shown}"));
    }
    Duration::try_from_secs_f64(value).map_err(|e| format!("{name} = {value}: {e}"))
}

/// A count of at least 1 and at most `max`; `unit` names one of what it counts ("image").
pub fn count(name: &str, value: usize, max: usize, unit: &str) -> Result<usize, String> {
    if value == 0 {
        return Err(format!("{name} must be at least 1 {unit}, found 0"));
    }
    if value > max {
        return Err(format!("{name} must be at most {max} {unit}s, found {value}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_counts_out_of_range_are_refused_by_name() {
        assert_eq!(seconds("interval_secs", 0.5), Ok(Duration::from_millis(500)));
        for bad in [0.0, -1.0, 1e300, f64::NAN, f64::INFINITY, MAX_SECONDS * 2.0] {
            let e = seconds("interval_secs", bad).unwrap_err();
            assert!(e.starts_with("interval_secs must be a positive number of seconds up to 2592000 (30 days), found "), "{e}");
        }
        assert_eq!(count("batch_size", 64, MAX_BATCH_SIZE, "image"), Ok(64));
        assert_eq!(count("batch_size", 0, MAX_BATCH_SIZE, "image").unwrap_err(), "batch_size must be at least 1 image, found 0");
        let e = count("unit_size", 1 << 40, MAX_UNIT_SIZE, "image").unwrap_err();
        assert_eq!(e, "unit_size must be at most 4096 images, found 1099511627776");
    }
}
