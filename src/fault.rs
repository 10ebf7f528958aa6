//! Fault injection for the crash tests (issue: "nothing lost"). A bottom module (it imports
//! nothing from rcaflow), so every layer that writes can name a fault point. `RCAFLOW_FAULT` names what to
//! break and where: `ACTION@POINT[:N]`, several separated by commas, for example
//! `abort@checkpoint.rca.write:2` or `panic@oracle.batch:3`.
//!
//! - `abort`: the process dies at once, with no unwinding and no flushing (what SIGKILL, a power
//!   cut or the OOM killer do to a run);
//! - `panic`: the calling stage panics (its actor catches it; see `restart`);
//! - `enospc`: the write at that point fails as on a full disk;
//! - `wait`: the caller blocks there until the file named by `RCAFLOW_FAULT_RELEASE` exists
//!   (a run held in the middle, so a test can try a second run on its directory, or kill it).
//!
//! `N` (default 1) is the hit of that point, counted per process, that triggers the fault. The
//! points are named by the code that calls [`at`]: `STAGE.batch` (a stage received a batch),
//! `STAGE.applied` (an accumulator folded a batch in, before any checkpoint of it),
//! `STAGE.unit` (a source recorded a unit and is about to send it), and one per kind of file
//! the atomic writer writes (`crate::files::atomic`), passed once its temporary is written and
//! synced, before the rename: `checkpoint.STAGE.write`, `png.write` (images), `figure.write`,
//! `report.write` (report.json, report.md), `manifest.write` (run.json), `npz.write`,
//! `npy.write`, `json.write` (other JSON outputs), `csv.write`, `features.write` (a spilled
//! feature block, before it is written), `weights.write` (trained
//! weights and training checkpoints). Without the variable every call is one atomic load.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable read once per process.
pub const ENV: &str = "RCAFLOW_FAULT";
/// For `wait`: the file whose appearance lets the waiting caller go on.
pub const RELEASE_ENV: &str = "RCAFLOW_FAULT_RELEASE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Abort,
    Panic,
    Enospc,
    Wait,
}

#[derive(Debug)]
struct Fault {
    action: Action,
    point: String,
    nth: u64,
    hits: AtomicU64,
}

fn faults() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| match std::env::var(ENV) {
        Ok(spec) => parse(&spec).unwrap_or_else(|e| {
            // A test that mistypes its fault must not silently test nothing.
            eprintln!("error: {ENV}={spec:?}: {e}");
            std::process::exit(2)
        }),
        Err(_) => Vec::new(),
    })
}

fn parse(spec: &str) -> Result<Vec<Fault>, String> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (action, rest) = item.trim().split_once('@').ok_or("expected ACTION@POINT[:N]")?;
            let action = match action {
                "abort" => Action::Abort,
                "panic" => Action::Panic,
                "enospc" => Action::Enospc,
                "wait" if std::env::var_os(RELEASE_ENV).is_none() => return Err(format!("wait needs {RELEASE_ENV}=FILE")),
                "wait" => Action::Wait,
                other => return Err(format!("action \"{other}\": expected abort, panic, enospc or wait")),
            };
            let (point, nth) = match rest.rsplit_once(':') {
                Some((p, n)) => (p, n.parse::<u64>().map_err(|_| format!("\"{n}\": expected a hit number (1, 2, ...)"))?),
                None => (rest, 1),
            };
            if point.is_empty() || nth == 0 {
                return Err(format!("\"{item}\": expected a point name and a hit number of at least 1"));
            }
            Ok(Fault { action, point: point.to_string(), nth, hits: AtomicU64::new(0) })
        })
        .collect()
}

/// Marks `point` as reached; breaks things there if `RCAFLOW_FAULT` says so.
pub fn at(point: &str) -> io::Result<()> {
    for fault in faults().iter().filter(|f| f.point == point) {
        if fault.hits.fetch_add(1, Ordering::SeqCst) + 1 != fault.nth {
            continue;
        }
        match fault.action {
            Action::Abort => {
                eprintln!("{ENV}: aborting at {point} (hit {})", fault.nth);
                std::process::abort();
            }
            Action::Panic => panic!("{ENV}: injected panic at {point} (hit {})", fault.nth),
            Action::Enospc => return Err(io::Error::from_raw_os_error(28)),
            Action::Wait => {
                let release = std::env::var_os(RELEASE_ENV).unwrap_or_default();
                eprintln!("{ENV}: waiting at {point} (hit {}) until {release:?} exists", fault.nth);
                while !std::path::Path::new(&release).exists() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_default_hit_and_reject_nonsense() {
        let f = parse("abort@checkpoint.rca.write:2, panic@oracle.batch").unwrap();
        assert_eq!((f[0].action, f[0].point.as_str(), f[0].nth), (Action::Abort, "checkpoint.rca.write", 2));
        assert_eq!((f[1].action, f[1].point.as_str(), f[1].nth), (Action::Panic, "oracle.batch", 1));
        assert!(parse("explode@x").unwrap_err().contains("expected abort, panic, enospc or wait"));
        assert!(parse("abort@x:0").is_err());
        assert!(parse("abort").is_err());
    }
}
