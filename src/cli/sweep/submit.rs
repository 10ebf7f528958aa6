//! `rcaflow sweep submit FILE --slurm|--k8s --out DIR`: the job files of every variation, from
//! the shipped deploy/ files (embedded, so the binary needs no checkout), and the one-line
//! commands that submit them. Nothing is submitted: the user runs the printed lines.
//!
//! Slurm: the shipped scripts are copied into DIR unchanged; each variation is one job array
//! (`--array=0-(N-1)`, shard K = array task K) of `rcaflow-shards.sbatch TOPOLOGY ROOT/NAME
//! --set ...`, and one `rcaflow-merge.sbatch ROOT/NAME` after it (`--dependency=afterok`).
//! Kubernetes: each variation is the shipped Indexed Job with its name, completions =
//! parallelism = `--shard-count` = N, run directory ROOT/NAME and the `--set` arguments, and the
//! shipped merge Job on the same directory; the claim (the shipped PersistentVolumeClaim) once.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::plan::{Sweep, Variation};

pub const SHARDS_SBATCH: &str = include_str!("../../../deploy/slurm/rcaflow-shards.sbatch");
pub const MERGE_SBATCH: &str = include_str!("../../../deploy/slurm/rcaflow-merge.sbatch");
pub const SHARDS_YAML: &str = include_str!("../../../deploy/kubernetes/rcaflow-shards.yaml");
pub const MERGE_YAML: &str = include_str!("../../../deploy/kubernetes/rcaflow-merge.yaml");

/// `DIR/sweep.json`: the expanded plan, which `sweep report DIR` reads.
pub const PLAN_FILE: &str = "sweep.json";
pub const PLAN_SCHEMA: &str = "rcaflow-sweep/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Slurm,
    Kubernetes,
}

/// What `sweep.json` holds.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PlanRecord {
    pub schema: String,
    pub sweep: PathBuf,
    pub topology: PathBuf,
    pub root: PathBuf,
    pub shards: u32,
    pub variations: Vec<PlannedVariation>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PlannedVariation {
    pub name: String,
    /// `KEY=VALUE`, as `rcaflow run --set` takes them.
    pub set: Vec<String>,
    pub run_dir: PathBuf,
}

impl PlanRecord {
    pub fn of(sweep: &Sweep) -> PlanRecord {
        PlanRecord {
            schema: PLAN_SCHEMA.into(),
            sweep: sweep.file.clone(),
            topology: sweep.topology.clone(),
            root: sweep.root.clone(),
            shards: sweep.shards,
            variations: sweep
                .variations
                .iter()
                .map(|v| PlannedVariation {
                    name: v.name.clone(),
                    set: v.overrides.iter().map(ToString::to_string).collect(),
                    run_dir: sweep.run_dir(v),
                })
                .collect(),
        }
    }
}

/// A file to write (relative to DIR) and what goes in it.
pub struct JobFile {
    pub name: String,
    pub text: String,
    pub executable: bool,
}

/// The files and the lines that submit them (one per variation).
pub struct Jobs {
    pub files: Vec<JobFile>,
    pub commands: Vec<(String, String)>,
    /// The script that runs every line.
    pub all: String,
}

/// Quoted for a POSIX shell where needed.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn set_args(v: &Variation) -> Vec<String> {
    v.overrides.iter().flat_map(|o| ["--set".to_string(), o.to_string()]).collect()
}

/// Slurm: the two shipped scripts and one line per variation.
pub fn slurm(sweep: &Sweep, out: &Path) -> Jobs {
    let shards_script = out.join("rcaflow-shards.sbatch").display().to_string();
    let merge_script = out.join("rcaflow-merge.sbatch").display().to_string();
    let extra: String = sweep.sbatch.iter().map(|f| format!(" {}", quote(f))).collect();
    let mut commands = Vec::new();
    for (i, v) in sweep.variations.iter().enumerate() {
        let run_dir = sweep.run_dir(v).display().to_string();
        // Each variation's tasks listen on their own ports (tasks of two variations may share a node).
        let base = 9900 + (i as u64 * u64::from(sweep.shards)) % 50_000;
        let mut array = vec![
            format!("--array=0-{}", sweep.shards - 1),
            format!("--export=ALL,RCAFLOW_METRICS_BASE={base}"),
            format!("--job-name=rcaflow-{}", v.name),
            shards_script.clone(),
            sweep.topology.display().to_string(),
            run_dir.clone(),
        ];
        array.extend(set_args(v));
        let array: Vec<String> = array.iter().map(|a| quote(a)).collect();
        let line = format!(
            "jid=$(sbatch --parsable{extra} {}) && sbatch{extra} --dependency=afterok:$jid {} {} {}",
            array.join(" "),
            quote(&format!("--job-name=rcaflow-merge-{}", v.name)),
            quote(&merge_script),
            quote(&run_dir)
        );
        commands.push((v.name.clone(), line));
    }
    let files = vec![
        JobFile { name: "rcaflow-shards.sbatch".into(), text: SHARDS_SBATCH.into(), executable: true },
        JobFile { name: "rcaflow-merge.sbatch".into(), text: MERGE_SBATCH.into(), executable: true },
    ];
    let all = script(sweep, "Slurm", &commands, false);
    Jobs { files, commands, all }
}

/// A Kubernetes object name (RFC 1123 label: lowercase letters, digits, `-`, 63 at most) for
/// variation number `i`: the number keeps names apart that the shortening would merge.
pub fn k8s_name(prefix: &str, i: usize, name: &str) -> String {
    let mut slug: String = name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    while slug.contains("--") {
        slug = slug.replace("--", "-");
    }
    let head = format!("{prefix}-{i}-");
    // 52: an Indexed Job's pods are named JOB-INDEX-XXXXX, which must fit 63.
    let room = 52usize.saturating_sub(head.len());
    let slug: String = slug.trim_matches('-').chars().take(room).collect();
    format!("{head}{}", slug.trim_end_matches('-')).trim_end_matches('-').to_string()
}

/// `text` with `from` (which must occur exactly once: the shipped file's anchor) made `to`.
fn replace_once(text: &str, from: &str, to: &str, file: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "the shipped {file} has {n} copies of \"{}\" where 1 was expected (rcaflow was built from edited deploy files)",
            from.trim()
        )),
    }
}

/// A YAML scalar: JSON's string syntax is YAML's double-quoted one.
fn yaml(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Kubernetes: the claim once, then per variation its Indexed Job and its merge Job.
pub fn kubernetes(sweep: &Sweep, out: &Path) -> Result<Jobs, String> {
    let k = &sweep.kubernetes;
    let (topology, root) = k.paths(sweep)?;
    let (claim_doc, job_doc) = SHARDS_YAML
        .split_once("\n---\n")
        .ok_or("the shipped rcaflow-shards.yaml has no `---` between the claim and the Job (rcaflow was built from edited deploy files)")?;
    let file = "deploy/kubernetes/rcaflow-shards.yaml";
    let claim = replace_once(claim_doc, "  name: rcaflow-runs\n", &format!("  name: {}\n", yaml(&k.claim)), file)?;
    let mut files = vec![JobFile { name: "claim.yaml".into(), text: format!("{}\n", claim.trim_end()), executable: false }];
    let mut commands = Vec::new();
    for (i, v) in sweep.variations.iter().enumerate() {
        let (job, merge_job) = (k8s_name("rcaflow", i, &v.name), k8s_name("rcaflow-merge", i, &v.name));
        let run_dir = format!("{}/{}", root.trim_end_matches('/'), v.name);
        let n = sweep.shards;
        let mut t = format!("# rcaflow sweep {}: variation {} ({} shards)\n{job_doc}", sweep.file.display(), v.name, n);
        for (from, to) in [
            ("  name: rcaflow-shards\n".to_string(), format!("  name: {job}\n")),
            ("  completions: 4\n".into(), format!("  completions: {n}\n")),
            ("  parallelism: 4\n".into(), format!("  parallelism: {n}\n")),
            ("            - \"4\"\n".into(), format!("            - \"{n}\"\n")),
            ("            - /runs/koin10/koin10.toml\n".into(), format!("            - {}\n", yaml(&topology))),
            ("            - /runs/koin10\n".into(), format!("            - {}\n", yaml(&run_dir))),
            ("            - cuda:0\n".into(), format!("            - {}\n", yaml(&k.device))),
            ("          image: rcaflow:latest\n".into(), format!("          image: {}\n", yaml(&k.image))),
            ("            claimName: rcaflow-runs\n".into(), format!("            claimName: {}\n", yaml(&k.claim))),
            (
                "        app: rcaflow\n".into(),
                format!("        app: rcaflow\n        rcaflow-variation: {}\n", yaml(&k8s_name("v", i, &v.name))),
            ),
        ] {
            t = replace_once(&t, &from, &to, file)?;
        }
        let sets: String = set_args(v).iter().map(|a| format!("            - {}\n", yaml(a))).collect();
        t = replace_once(&t, "            - 0.0.0.0:9898\n", &format!("            - 0.0.0.0:9898\n{sets}"), file)?;
        let merge_file = "deploy/kubernetes/rcaflow-merge.yaml";
        let line = format!("exec rcaflow merge {}/shard-*-of-* --out {}/merged --device cpu", quote(&run_dir), quote(&run_dir));
        let mut m = format!("# rcaflow sweep {}: the merge of variation {}\n{MERGE_YAML}", sweep.file.display(), v.name);
        for (from, to) in [
            ("  name: rcaflow-merge\n".to_string(), format!("  name: {merge_job}\n")),
            (
                "[\"sh\", \"-c\", \"exec rcaflow merge /runs/koin10/shard-*-of-* --out /runs/koin10/merged --device cpu\"]".into(),
                format!("[\"sh\", \"-c\", {}]", yaml(&line)),
            ),
            ("          image: rcaflow:latest\n".into(), format!("          image: {}\n", yaml(&k.image))),
            ("            claimName: rcaflow-runs\n".into(), format!("            claimName: {}\n", yaml(&k.claim))),
        ] {
            m = replace_once(&m, &from, &to, merge_file)?;
        }
        let (jf, mf) = (format!("{}.yaml", v.name), format!("{}-merge.yaml", v.name));
        let q = |f: &str| quote(&out.join(f).display().to_string());
        commands.push((
            v.name.clone(),
            format!(
                "kubectl apply -f {} && kubectl wait --for=condition=complete --timeout=48h job/{job} && kubectl apply -f {}",
                q(&jf),
                q(&mf)
            ),
        ));
        files.push(JobFile { name: jf, text: t, executable: false });
        files.push(JobFile { name: mf, text: m, executable: false });
    }
    let all = script(sweep, "Kubernetes", &commands, true);
    Ok(Jobs { files, commands, all })
}

/// The script that submits every variation: the printed lines, one after the other (with
/// `background`, side by side: `kubectl wait` blocks until its Job is done).
fn script(sweep: &Sweep, scheduler: &str, commands: &[(String, String)], background: bool) -> String {
    let mut s = format!(
        "#!/usr/bin/env bash\n# Submits the {} variations of the sweep {} to {scheduler} (written by rcaflow sweep submit).\nset -euo pipefail\n",
        commands.len(),
        sweep.file.display()
    );
    for (name, line) in commands {
        s.push_str(&format!("# {name}\n"));
        if background {
            s.push_str(&format!("( {line} ) &\n"));
        } else {
            s.push_str(&format!("{line}\n"));
        }
    }
    if background {
        s.push_str("wait\n");
    }
    s
}
