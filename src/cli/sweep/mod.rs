//! `rcaflow sweep plan|submit|report`: many runs of one topology (DESIGN.md §2 "Beyond one
//! machine"), each variation an ordinary sharded run with some keys changed (`run --set`).
//! [`plan`] reads the sweep file and names the variations, [`submit`] writes their job files
//! from the shipped deploy/ files, [`report`] gathers their merged reports into one table and
//! the FID (KID) against RCA figure. rcaflow submits nothing itself: the scheduler does.

pub mod plan;
pub mod report;
pub mod submit;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::CliError;
use plan::Sweep;
use submit::{PlanRecord, Scheduler, PLAN_FILE, PLAN_SCHEMA};

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub command: SweepCommand,
}

#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Print the variations of a sweep file (name and --set overrides), each topology checked.
    Plan {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write the job files of every variation (shards and merge) and print the commands that
    /// submit them.
    Submit(SubmitArgs),
    /// Gather the variations' merged reports into one table and the FID/KID-against-RCA figure.
    Report {
        /// The sweep file, or the folder `sweep submit` wrote (it holds sweep.json).
        #[arg(value_name = "FILE|DIR")]
        sweep: PathBuf,
        /// Where sweep_report.md, .csv, .json and tradeoff.png go.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scheduler").required(true).args(["slurm", "k8s"])))]
pub struct SubmitArgs {
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Slurm: one job array per variation (a task per shard) and a merge job after it.
    #[arg(long)]
    pub slurm: bool,
    /// Kubernetes: one Indexed Job per variation (a pod per shard) and a merge Job.
    #[arg(long)]
    pub k8s: bool,
    /// The folder the job files go in (new, or an earlier submit's); on storage the jobs see.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn sweep(args: SweepArgs) -> Result<(), CliError> {
    match args.command {
        SweepCommand::Plan { file } => plan_command(&file),
        SweepCommand::Submit(a) => submit_command(&a),
        SweepCommand::Report { sweep, out } => report_command(&sweep, &out),
    }
}

fn load(file: &Path) -> Result<Sweep, CliError> {
    Sweep::load(file).map_err(|e| CliError::Input(e.to_string()))
}

fn plan_command(file: &Path) -> Result<(), CliError> {
    let sweep = load(file)?;
    println!(
        "sweep {}: {} variation{} of {}, {} shard{} each, under {}",
        file.display(),
        sweep.variations.len(),
        if sweep.variations.len() == 1 { "" } else { "s" },
        sweep.topology.display(),
        sweep.shards,
        if sweep.shards == 1 { "" } else { "s" },
        sweep.root.display()
    );
    let width = sweep.variations.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in &sweep.variations {
        let sets: Vec<String> = v.overrides.iter().map(|o| format!("--set {}", submit::quote(&o.to_string()))).collect();
        println!("  {:width$}  {}", v.name, sets.join(" "));
    }
    Ok(())
}

fn write(path: &Path, text: &str, executable: bool) -> Result<(), CliError> {
    crate::files::atomic::write(path, text.as_bytes(), "report.write")
        .map_err(|e| CliError::Output(format!("\"{}\": cannot write: {e}", path.display())))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| CliError::Output(format!("\"{}\": cannot make executable: {e}", path.display())))?;
    }
    Ok(())
}

fn submit_command(args: &SubmitArgs) -> Result<(), CliError> {
    let sweep = load(&args.file)?;
    let out = std::path::absolute(&args.out).unwrap_or_else(|_| args.out.clone());
    if out.is_dir() && !out.join(PLAN_FILE).exists() {
        let entries = std::fs::read_dir(&out).map_err(|e| CliError::Input(format!("--out \"{}\": cannot read: {e}", out.display())))?;
        if entries.count() > 0 {
            return Err(CliError::Input(format!(
                "--out \"{}\" holds other files (no {PLAN_FILE} of an earlier submit); give a new folder",
                out.display()
            )));
        }
    }
    let scheduler = if args.slurm { Scheduler::Slurm } else { Scheduler::Kubernetes };
    let (jobs, script) = match scheduler {
        Scheduler::Slurm => (submit::slurm(&sweep, &out), "submit-slurm.sh"),
        Scheduler::Kubernetes => {
            let jobs = submit::kubernetes(&sweep, &out).map_err(|e| CliError::Input(format!("sweep {}: {e}", args.file.display())))?;
            (jobs, "submit-k8s.sh")
        }
    };
    std::fs::create_dir_all(&out).map_err(|e| CliError::Output(format!("--out \"{}\": cannot create: {e}", out.display())))?;
    for f in &jobs.files {
        write(&out.join(&f.name), &f.text, f.executable)?;
    }
    write(&out.join(script), &jobs.all, true)?;
    let record = serde_json::to_string_pretty(&PlanRecord::of(&sweep)).map_err(|e| CliError::Output(e.to_string()))?;
    write(&out.join(PLAN_FILE), &record, false)?;
    println!("wrote the job files of {} variations into {}; submit each with:", sweep.variations.len(), out.display());
    for (name, line) in &jobs.commands {
        println!("# {name}\n{line}");
    }
    println!("# or every variation at once:\nbash {}", submit::quote(&out.join(script).display().to_string()));
    if scheduler == Scheduler::Kubernetes {
        println!("# the claim the pods share, once (unless it exists): kubectl apply -f {}", out.join("claim.yaml").display());
    }
    println!("# then: rcaflow sweep report {} --out DIR", submit::quote(&out.display().to_string()));
    Ok(())
}

/// The plan of a sweep file, or the one `sweep submit` recorded in a folder.
fn plan_of(sweep: &Path) -> Result<PlanRecord, CliError> {
    if sweep.is_dir() {
        let path = sweep.join(PLAN_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            CliError::Input(format!(
                "\"{}\": no readable {PLAN_FILE} ({e}); give the sweep file, or the folder `rcaflow sweep submit` wrote",
                sweep.display()
            ))
        })?;
        let plan: PlanRecord =
            serde_json::from_slice(&bytes).map_err(|e| CliError::Input(format!("\"{}\": not a sweep plan: {e}", path.display())))?;
        if plan.schema != PLAN_SCHEMA {
            return Err(CliError::Input(format!("\"{}\": schema \"{}\", expected \"{PLAN_SCHEMA}\"", path.display(), plan.schema)));
        }
        return Ok(plan);
    }
    let parsed = Sweep::read(sweep).map_err(|e| CliError::Input(e.to_string()))?;
    Ok(PlanRecord::of(&parsed))
}

fn report_command(sweep: &Path, out: &Path) -> Result<(), CliError> {
    let plan = plan_of(sweep)?;
    let rows = report::rows(&plan);
    let name = plan.sweep.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().to_string());
    let title = format!("Sweep {name}: {} variations of {}", rows.len(), plan.topology.display());
    std::fs::create_dir_all(out).map_err(|e| CliError::Output(format!("--out \"{}\": cannot create: {e}", out.display())))?;
    let md = report::markdown(&title, &rows);
    write(&out.join("sweep_report.md"), &md, false)?;
    write(&out.join("sweep_report.csv"), &report::csv(&rows), false)?;
    let json =
        serde_json::to_string_pretty(&serde_json::json!({ "schema": "rcaflow-sweep-report/1", "sweep": plan.sweep, "variations": rows }))
            .map_err(|e| CliError::Output(e.to_string()))?;
    write(&out.join("sweep_report.json"), &json, false)?;
    let points: Vec<crate::report::figures::TradeoffPoint> = rows
        .iter()
        .filter_map(|r| {
            let rca = r.rca?;
            (r.fid.is_some() || r.kid.is_some()).then(|| crate::report::figures::TradeoffPoint {
                label: &r.name,
                rca,
                fid: r.fid,
                kid: r.kid,
                partial: r.status != "complete",
            })
        })
        .collect();
    let not_shown: Vec<String> =
        rows.iter()
            .filter(|r| r.rca.is_none() || (r.fid.is_none() && r.kid.is_none()))
            .map(|r| {
                if r.rca.is_none() && r.status == "complete" {
                    format!("{} (no RCA)", r.name)
                } else {
                    format!("{} ({})", r.name, r.status)
                }
            })
            .collect();
    let figure = out.join("tradeoff.png");
    crate::report::figures::tradeoff(&figure, &format!("Sweep {name}: the trade-off"), &points, &not_shown)
        .map_err(|e| CliError::Output(e.to_string()))?;
    print!("{md}");
    let incomplete: Vec<&report::Row> = rows.iter().filter(|r| r.status != "complete").collect();
    if !incomplete.is_empty() {
        let names: Vec<String> = incomplete.iter().map(|r| format!("{} ({})", r.name, r.status)).collect();
        eprintln!("{} of {} variations are not complete: {}", incomplete.len(), rows.len(), names.join(", "));
    }
    println!("wrote sweep_report.md, sweep_report.csv, sweep_report.json and tradeoff.png into {}", out.display());
    Ok(())
}
