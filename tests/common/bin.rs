//! Running the `rcaflow` binary (the one cargo built for this package's tests and benches).

use std::path::Path;
use std::process::{Command, ExitStatus};

/// `rcaflow`, ready for arguments: without `RUST_LOG` (a log level from the caller's shell would
/// change what the binary writes to stderr) and without `RCAFLOW_FAULT` (faults are injected
/// only where a test sets one). Spawn it, or finish it with [`Ran::of`]. `RCAFLOW_TEST_BIN`
/// names another build of it (scripts/gpu_check.sh runs test executables built elsewhere).
pub fn rcaflow() -> Command {
    let bin = std::env::var_os("RCAFLOW_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_rcaflow").into());
    let mut cmd = Command::new(bin);
    cmd.env_remove("RUST_LOG").env_remove("RCAFLOW_FAULT");
    cmd
}

/// The settings of runs that are killed and resumed: metrics off (tests run side by side), and a
/// checkpoint after every batch, so a crash finds some stages ahead of others.
pub const CHECKPOINT_OFTEN: &str = "[metrics]\nlisten = \"off\"\n[runtime]\ncheckpoint_interval_secs = 0.001\n";

/// [`rcaflow`] with `--config ROOT/settings.toml`, that file written with [`CHECKPOINT_OFTEN`]
/// on first use.
pub fn rcaflow_checkpointing(root: &Path) -> Command {
    let config = root.join("settings.toml");
    if !config.exists() {
        std::fs::write(&config, CHECKPOINT_OFTEN).unwrap();
    }
    let mut cmd = rcaflow();
    cmd.arg("--config").arg(config);
    cmd
}

/// What a finished command gave: its exit status, its stdout and its stderr (text: rcaflow writes
/// UTF-8 only, and anything else fails the test).
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Runs `cmd` to its end with the fault `fault` injected (`RCAFLOW_FAULT`, see src/fault.rs),
    /// if any.
    pub fn with_fault(cmd: &mut Command, fault: Option<&str>) -> Ran {
        if let Some(f) = fault {
            cmd.env("RCAFLOW_FAULT", f);
        }
        Ran::of(cmd)
    }

    /// Runs `cmd` to its end, its output captured.
    pub fn of(cmd: &mut Command) -> Ran {
        let o = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let text =
            |bytes: Vec<u8>, stream: &str| String::from_utf8(bytes).unwrap_or_else(|e| panic!("{cmd:?} wrote non-UTF-8 to {stream}: {e}"));
        Ran { status: o.status, stdout: text(o.stdout, "stdout"), stderr: text(o.stderr, "stderr") }
    }

    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// `rcaflow` with `args`, run to its end.
pub fn run<I, S>(args: I) -> Ran
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Ran::of(rcaflow().args(args))
}
