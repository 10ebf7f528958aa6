//! CPU threads of the models' kernels. Every parallel kernel rcaflow runs on the CPU (its fused
//! convolution, group norm and attention, candle's gemm, faer's matrix products in the metric
//! maths) splits its work over the *current* rayon pool, so where work runs is decided by which
//! pool a thread is in:
//!
//! - by default every stage submits to the one process-wide pool, sized by `[runtime] threads`
//!   (0: one thread per core). Stages that are busy at the same time share its threads, so
//!   several model stages never run more kernel threads than the machine has cores, and a stage
//!   that is idle (waiting for images) leaves its share to the others;
//! - a component that sets `threads = N` gets a pool of its own with N threads ([`StagePool`]),
//!   for a user who wants to pin, say, the sampler to most cores and an evaluator to one.
//!
//! candle's own matrix products split into `RAYON_NUM_THREADS` tasks (read at every call), so the
//! process-wide setting is mirrored there too; its elementwise ops run inline on the calling
//! thread (`CANDLE_NUM_THREADS=1`, see [`configure_process`]).

use std::sync::Arc;

/// The most threads one pool may have: far beyond any machine's cores, well short of what would
/// exhaust the process's thread limit.
pub const MAX_THREADS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("{what} must be between 1 and {MAX_THREADS}, found {found}")]
    OutOfRange { what: String, found: usize },
    #[error("cannot start {threads} kernel threads for {what}: {cause}")]
    Start { what: String, threads: usize, cause: String },
}

/// The number of cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sizes the process-wide pool: `0` means one thread per core. Takes effect only before the
/// first parallel kernel has run (rayon fixes its global pool then); later calls, and a pool
/// that something already started, keep the size it has, which this says in the log.
pub fn configure_process(threads: usize) -> Result<usize, ThreadsError> {
    let n = match threads {
        0 => available_cores(),
        n if n > MAX_THREADS => return Err(ThreadsError::OutOfRange { what: "runtime.threads".into(), found: n }),
        n => n,
    };
    // candle reads this at every matrix product to decide how many tasks to cut it into.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    // candle's elementwise ops (adds, copies, activations outside the fused kernels) run on a
    // barrier pool of threads of its own, outside rayon and so outside this budget, whose
    // caller spins until every worker is done: a tenth of the UNet's time went to that spin.
    // One thread makes it run them inline on the caller; they are memory-bound anyway. Read
    // once, when candle first needs the pool, which is after this; a user's value is kept.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(|i| format!("kernels-{i}")).build_global() {
        tracing::debug!("process-wide kernel pool already started ({e}); it keeps {} threads", rayon::current_num_threads());
    }
    Ok(n)
}

/// A stage's own kernel threads (`threads = N` on its component).
#[derive(Clone)]
pub struct StagePool {
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for StagePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagePool({} threads)", self.pool.current_num_threads())
    }
}

impl StagePool {
    /// `what` names the stage for messages and thread names (`stage-<what>-<i>`).
    pub fn new(what: &str, threads: usize) -> Result<StagePool, ThreadsError> {
        if threads == 0 || threads > MAX_THREADS {
            return Err(ThreadsError::OutOfRange { what: format!("{what}: threads"), found: threads });
        }
        let name = what.to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("stage-{name}-{i}"))
            .build()
            .map_err(|e| ThreadsError::Start { what: what.into(), threads, cause: e.to_string() })?;
        Ok(StagePool { pool: Arc::new(pool) })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` with its parallel kernels on this pool. `f` itself runs on one of the pool's
    /// threads, which works alongside the others whenever `f` starts parallel work.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Runs `f` on `pool` when there is one, else right here (kernels on the process-wide pool).
pub fn in_pool<R: Send>(pool: Option<&StagePool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_pool_bounds_the_parallel_work_inside_it() {
        let pool = StagePool::new("sinks.test", 1).unwrap();
        assert_eq!(pool.threads(), 1);
        let (inside, name) = pool.install(|| (rayon::current_num_threads(), std::thread::current().name().map(str::to_string)));
        assert_eq!(inside, 1);
        assert_eq!(name.as_deref(), Some("stage-sinks.test-0"));
        let pool = StagePool::new("sinks.test", 3).unwrap();
        assert_eq!(in_pool(Some(&pool), rayon::current_num_threads), 3);
    }

    #[test]
    fn out_of_range_counts_are_refused_naming_the_setting() {
        assert_eq!(
            StagePool::new("transforms.oracle", 0).unwrap_err().to_string(),
            "transforms.oracle: threads must be between 1 and 1024, found 0"
        );
        assert_eq!(configure_process(5000).unwrap_err().to_string(), "runtime.threads must be between 1 and 1024, found 5000");
    }
}
