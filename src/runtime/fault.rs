//! Fault injection for the crash tests (issue: "nothing lost"). `RCAFLOW_FAULT` names what to
//! break and where: `ACTION@POINT[:N]`, several separated by commas, for example
//! `abort@checkpoint.rca.write:2` or `panic@oracle.batch:3`.
//!
//! - `abort`: the process dies at once, with no unwinding and no flushing (what SIGKILL, a power
//!   cut or the OOM killer do to a run);
//! - `panic`: the calling stage panics (its actor catches it; see `restart`);
//! - `enospc`: the write at that point fails as on a full disk.
//!
//! `N` (default 1) is the hit of that point, counted per process, that triggers the fault. The
//! points are named by the code that calls [`at`]: `STAGE.batch` (a stage received a batch),
//! `STAGE.applied` (an accumulator folded a batch in, before any checkpoint of it),
//! `checkpoint.STAGE.write` (a checkpoint's temporary file is written and synced, not yet
//! renamed), `STAGE.unit` (a source recorded a unit and is about to send it). Without the
//! variable every call is one atomic load.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable read once per process.
pub const ENV: &str = "RCAFLOW_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Abort,
    Panic,
    Enospc,
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
                other => return Err(format!("action \"{other}\": expected abort, panic or enospc")),
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
        assert!(parse("explode@x").unwrap_err().contains("expected abort, panic or enospc"));
        assert!(parse("abort@x:0").is_err());
        assert!(parse("abort").is_err());
    }
}
