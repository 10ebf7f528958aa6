//! The committed demo (models/demo, topology/demo-rca.toml): a fresh clone runs it with nothing
//! else, and it gives the figures the README states: the oracle well above chance on the real
//! held-out images, and recognising most generated images.

mod common;

use std::path::Path;

use common::bin::{rcaflow, Ran};
use serde_json::Value;

#[test]
fn the_demo_runs_from_the_repository_alone_and_its_ddpm_keeps_identities_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = tmp.path().join("settings.toml");
    std::fs::write(&settings, "[metrics]\nlisten = \"off\"\n").unwrap();
    // The shipped file, with its models where they are and its outputs in the temporary folder.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("topology/demo-rca.toml")).unwrap();
    let text = text
        .replace("\"../models/demo", &format!("\"{}/models/demo", repo.display()))
        .replace("\"../runs/demo-rca/samples\"", &format!("\"{}/samples\"", tmp.path().display()));
    let topology = tmp.path().join("demo-rca.toml");
    std::fs::write(&topology, text).unwrap();
    let run_dir = tmp.path().join("run");
    let o = Ran::of(rcaflow().arg("--config").arg(&settings).args(["run", "--topology"]).arg(&topology).arg("--run-dir").arg(&run_dir));
    assert!(o.success(), "{}", o.stderr);
    let r: Value = serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "complete");
    assert_eq!(r["generation"]["sampler"]["generated"], serde_json::json!(vec![20; 10]));
    let real = r["real"]["accuracy"].as_f64().unwrap();
    let generated = r["generated"]["accuracy"].as_f64().unwrap();
    println!("demo: real accuracy {real}, generated accuracy {generated}, RCA {}", r["rca"]["global"]);
    // Chance is 0.1 for 10 classes.
    assert!(real >= 0.9, "the demo oracle on the real held-out images: {real}");
    assert!(generated >= 0.6, "the oracle should recognise most generated images: {generated}");
    assert_eq!(std::fs::read_dir(tmp.path().join("samples")).unwrap().count(), 10, "one folder of samples per class");
}
