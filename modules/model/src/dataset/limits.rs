//! The largest numbers a dataset config may ask for (documented in docs/datasets.md, "Limits").
//! They are far above what any real task needs and far below what breaks arithmetic or
//! matchmaking: a typo (`memory: 1e308`, `iterations: 1e9`) is refused at submission with the
//! path of the value, instead of a task no grid can run or a worker that loops for years.

/// Most times one tray runs in a task.
pub const MAX_ITERATIONS: i64 = 100_000;
/// Most cores one task may ask for.
pub const MAX_CPU: f64 = 1_024.0;
/// Most GPUs one task may ask for.
pub const MAX_GPU: f64 = 64.0;
/// Most memory one task may ask for, in GB (16 TB).
pub const MAX_MEMORY_GB: f64 = 16_384.0;
/// Most disk one task may ask for, in GB (100 TB).
pub const MAX_DISK_GB: f64 = 100_000.0;
/// Longest run time one task may ask for, in hours (a year).
pub const MAX_TIME_HOURS: f64 = 8_760.0;

/// The most a numeric requirement (`cpu`, `gpu`, `memory`, `disk`, `time`) may be, with its
/// unit for messages; `None` for a key that is not numeric.
pub fn requirement_max(key: &str) -> Option<(f64, &'static str)> {
    match key {
        "cpu" => Some((MAX_CPU, "cores")),
        "gpu" => Some((MAX_GPU, "GPUs")),
        "memory" => Some((MAX_MEMORY_GB, "GB")),
        "disk" => Some((MAX_DISK_GB, "GB")),
        "time" => Some((MAX_TIME_HOURS, "hours")),
        _ => None,
    }
}

/// Why `n` is not a valid value of requirement `key`; `None` when it is.
pub fn requirement_problem(key: &str, n: f64) -> Option<String> {
    if !n.is_finite() || n < 0.0 {
        return Some(format!("must be 0 or more, found {}", short(n)));
    }
    let (max, unit) = requirement_max(key)?;
    (n > max).then(|| format!("{} is more than the limit of {max} {unit}", short(n)))
}

/// `n` as a person reads it: `1e308`, not 309 digits.
fn short(n: f64) -> String {
    if n.is_finite() && n.abs() >= 1e15 {
        format!("{n:e}")
    } else {
        n.to_string()
    }
}
