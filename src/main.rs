//! The `rcaflow` binary: parse flags, set up logging, run the command, map errors to exit codes.

use std::io::IsTerminal;

use clap::Parser;
use rcaflow::cli::{dispatch, load_settings, Cli};
use tracing_subscriber::EnvFilter;

/// Keeps freed tensor buffers in the process for the next ones instead of handing them back to
/// the kernel: glibc's defaults return (munmap, trim) freed memory of the sizes tensors have,
/// so every op's fresh output page-faults its way in again (a quarter of the CPU time of
/// `rcaflow sample` went to clearing pages). Buffers up to 32 MiB (glibc's cap) come from the
/// heap, and the heap is not trimmed: resident memory stays at its peak, which a run reaches
/// within its first batches anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let code = match load_settings(&cli.config, &cli.log_level) {
        Ok(settings) => {
            let filter = match &cli.log_level {
                Some(level) => EnvFilter::try_new(level),
                None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.log.level)),
            };
            match filter {
                Ok(filter) => {
                    tracing_subscriber::fmt()
                        .with_env_filter(filter)
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::stderr().is_terminal())
                        .init();
                    match dispatch(cli, settings) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("error: {e}");
                            e.exit_code()
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: log level: {e}");
                    2
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
