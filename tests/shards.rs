//! Beyond one machine (DESIGN.md §2, issue 19): the tiny sampler topology of
//! tests/common/tiny_run.rs cut into 1, 2 and 3 shards (`rcaflow run --shard K/N`), each an
//! ordinary resumable run, merges (`rcaflow merge`) into the report of the same topology run
//! on one machine: counts and confusion matrices exactly, FID, IS and LPIPS within 1e-9
//! relative. A shard killed mid-run merges as a `partial` report, then resumes and merges
//! whole; merge refuses a missing, a duplicated and a foreign shard, naming it. The shipped
//! deploy/ files: the Kubernetes Indexed Job is parsed and checked, and the Slurm batch script
//! runs for real as a job array on a one-node Slurm cluster started by the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::bin::{rcaflow_checkpointing, Ran};
use common::tiny_run;
use serde_json::Value;

/// The bound for the float metrics of a merged run (their sums see units in another order).
const RELATIVE: f64 = 1e-9;

fn run(root: &Path, args: &[&str], fault: Option<&str>) -> Ran {
    let mut cmd = rcaflow_checkpointing(root);
    cmd.args(args);
    Ran::with_fault(&mut cmd, fault)
}

fn topology_arg(topology: &Path) -> String {
    topology.display().to_string()
}

/// Runs shard `k` of `n` of `topology` to its end.
fn run_shard(root: &Path, topology: &Path, k: u32, n: u32) {
    let shard = format!("{k}/{n}");
    let o = run(root, &["run", "--topology", &topology_arg(topology), "--shard", &shard], None);
    assert!(o.success(), "shard {shard}: {}", o.stderr);
}

/// `rcaflow merge DIRS --out OUT`.
fn merge(root: &Path, dirs: &[PathBuf], out: &Path) -> Ran {
    let mut cmd = rcaflow_checkpointing(root);
    cmd.arg("merge").args(dirs).arg("--out").arg(out);
    Ran::of(&mut cmd)
}

fn shard_dirs(root: &Path, name: &str, n: u32) -> Vec<PathBuf> {
    (0..n).map(|k| root.join(format!("run-{name}/shard-{k}-of-{n}"))).collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The single-machine run every merge is compared with (made once per test binary).
fn straight() -> &'static (PathBuf, Value) {
    static STRAIGHT: OnceLock<(PathBuf, Value)> = OnceLock::new();
    STRAIGHT.get_or_init(|| {
        // In the target folder (not leaked into /tmp), made afresh by each run of this binary.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shards-straight");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let topology = tiny_run::write_topology(&root, "straight", 1, None);
        let o = run(&root, &["run", "--topology", &topology_arg(&topology)], None);
        assert!(o.success(), "{}", o.stderr);
        let r = read_json(&root.join("run-straight/report.json"));
        assert_eq!(r["status"], "complete");
        (root, r)
    })
}

/// The merged report in `out` equals the single-machine one (paths aside); returns it.
fn assert_merged_equals_straight(root: &Path, name: &str, out: &Path) -> Value {
    let (straight_root, straight_report) = straight();
    let rooted = |r: Value, root: &Path, name: &str| -> Value {
        let text = serde_json::to_string(&tiny_run::comparable(r)).unwrap();
        serde_json::from_str(&text.replace(&root.display().to_string(), "ROOT").replace(&format!("-{name}"), "-NAME")).unwrap()
    };
    let merged = read_json(&out.join("report.json"));
    let a = rooted(merged.clone(), root, name);
    let b = rooted(straight_report.clone(), straight_root, "straight");
    let diffs = tiny_run::differences(&a, &b, RELATIVE);
    assert!(diffs.is_empty(), "{name}: the merged report differs from the single run's:\n{}", diffs.join("\n"));
    // Every metric is there (a merge that lost one would compare equal only if both lacked it).
    for key in ["rca", "fid", "inception_score", "lpips_diversity"] {
        assert!(!merged[key].is_null(), "{name}: no {key} in the merged report");
    }
    assert_eq!(merged["generated"]["total"], 15);
    for figure in ["confusion_real.png", "confusion_generated.png", "rca_per_class.png", "samples_grid.png"] {
        assert!(out.join(figure).is_file(), "{name}: no {figure}");
    }
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("complete"));
    merged
}

/// One shard (a variation by `--set` of the file's own seed: recorded in run.json and applied
/// again by merge) and two shards, one of them killed: merged partial, refused to another shard,
/// resumed, merged whole into the same folder; then merge's refusals on those shards.
#[test]
fn one_and_two_shards_merge_to_the_single_run_report_with_a_killed_shard_resumed() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // One shard, started with --set.
    let topology = tiny_run::write_topology(root, "n1", 1, None);
    let o = run(root, &["run", "--topology", &topology_arg(&topology), "--shard", "0/1", "--set", "sources.sampler.seed=3"], None);
    assert!(o.success(), "shard 0/1: {}", o.stderr);
    let dirs = shard_dirs(root, "n1", 1);
    let manifest = read_json(&dirs[0].join("run.json"));
    assert_eq!(manifest["shard"], serde_json::json!({ "index": 0, "count": 1 }));
    assert_eq!(manifest["overrides"], serde_json::json!(["sources.sampler.seed=3"]));
    let status = Ran::of(rcaflow_checkpointing(root).arg("status").arg(&dirs[0]));
    assert!(status.stdout.contains("shard 0/1: its own units only"), "{}", status.stdout);
    let out = root.join("merged-n1");
    let o = merge(root, &dirs, &out);
    assert!(o.success(), "merge of 1 shard: {}", o.stderr);
    assert!(o.stdout.contains("merged 1 shards into"), "{}", o.stdout);
    assert_eq!(assert_merged_equals_straight(root, "n1", &out)["status"], "complete");
    assert_eq!(read_json(&out.join("run.json"))["overrides"], serde_json::json!(["sources.sampler.seed=3"]));
    let record = read_json(&out.join("merge.json"));
    assert_eq!((record["complete"].as_bool(), record["shards"].as_array().map(Vec::len)), (Some(true), Some(1)));

    // Two shards; shard 1 dies at once (as SIGKILL would) after its sampler recorded its 2nd unit.
    let name = "n2";
    let topology = tiny_run::write_topology(root, name, 1, None);
    let t = topology_arg(&topology);
    run_shard(root, &topology, 0, 2);
    let o = run(root, &["run", "--topology", &t, "--shard", "1/2"], Some("abort@sampler.unit:2"));
    assert!(o.code().is_none(), "the shard should have died: {}", o.stderr);
    let dirs = shard_dirs(root, name, 2);
    assert!(!dirs[1].join("report.json").exists());
    let status = Ran::of(rcaflow_checkpointing(root).arg("status").arg(&dirs[0]));
    assert!(status.stdout.contains("shard 0/2: its own units only"), "{}", status.stdout);

    // A live merge of what is on disk: a partial report, saying how far shard 1 was.
    let out = root.join("merged-n2");
    let o = merge(root, &dirs, &out);
    assert!(o.success(), "{}", o.stderr);
    assert!(o.stderr.contains("shard 1/2 (") && o.stderr.contains("the merged report is partial"), "{}", o.stderr);
    let partial = read_json(&out.join("report.json"));
    assert_eq!(partial["status"], "partial");
    let total = partial["generated"]["total"].as_u64().unwrap();
    assert!(total < 15, "a partial merge counts only the units done: {total}");
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("**partial**"));
    let record = read_json(&out.join("merge.json"));
    assert_eq!(record["complete"], false);
    let s1 = &record["shards"][1];
    assert!(s1["units_done"].as_u64() < s1["units_planned"].as_u64(), "{record}");

    // The shard's directory is refused to a run that is not that shard.
    let whole = run(root, &["run", "--topology", &t, "--run-dir", &dirs[1].display().to_string()], None);
    assert_eq!(whole.code(), Some(2), "{}", whole.stderr);
    assert!(whole.stderr.contains("shard 1/2 became the whole run"), "{}", whole.stderr);

    // Resumed, it finishes its units; merged again into the same folder (given in reverse order:
    // the order on the command line does not matter), the earlier merge is replaced by the
    // single run's report.
    let o = run(root, &["run", "--topology", &t, "--shard", "1/2"], None);
    assert!(o.success(), "resume: {}", o.stderr);
    let sessions = read_json(&dirs[1].join("run.json"))["sessions"].as_array().unwrap().len();
    assert_eq!(sessions, 2, "the killed start and the resume (the refused start recorded nothing)");
    let mut reversed = dirs.clone();
    reversed.reverse();
    let o = merge(root, &reversed, &out);
    assert!(o.success(), "{}", o.stderr);
    assert!(o.stdout.contains("merged 2 shards into"), "{}", o.stdout);
    assert_eq!(assert_merged_equals_straight(root, name, &out)["status"], "complete");
    assert_eq!(read_json(&out.join("merge.json"))["complete"], true);

    // Refusals. A foreign shard: shard 1 of the same models with another seed (its manifest is
    // what merge reads before any state).
    let theirs = root.join("run-theirs/shard-1-of-2");
    std::fs::create_dir_all(&theirs).unwrap();
    let mut foreign = read_json(&dirs[1].join("run.json"));
    foreign["components"]["sources.sampler"]["seed"] = 4.into();
    std::fs::write(theirs.join("run.json"), serde_json::to_vec_pretty(&foreign).unwrap()).unwrap();
    let refused_out = root.join("refused");
    let refused = |dirs: &[PathBuf], expected: &[&str]| {
        let o = merge(root, dirs, &refused_out);
        assert_eq!(o.code(), Some(2), "{dirs:?}: {}", o.stderr);
        let line = o.stderr.trim();
        assert!(!line.contains('\n'), "one line: {line}");
        for e in expected {
            assert!(line.contains(e), "{dirs:?}: expected {e:?} in: {line}");
        }
        assert!(!refused_out.join("report.json").exists(), "nothing merged");
    };
    refused(&dirs[..1], &["shard 1/2 is missing (its directory is shard-1-of-2); given shards 0 of 2"]);
    refused(&[dirs[0].clone(), dirs[1].clone(), dirs[0].clone()], &["shard 0/2 is given twice", &dirs[0].display().to_string()]);
    refused(
        &[dirs[0].clone(), theirs.clone()],
        &[&format!("shard directory \"{}\" holds a run of another topology", theirs.display()), "sources.sampler changed (seed)"],
    );
    refused(&[root.join("nowhere")], &["nowhere\": no run.json"]);
    refused(&[root.join("run-n2")], &["no run.json"]);
}

/// A one-node Slurm cluster in a temporary folder: munged, slurmctld and slurmd run in the
/// foreground as children of the test, stopped (killed and reaped) when this value drops.
struct Cluster {
    dir: tempfile::TempDir,
    daemons: Vec<std::process::Child>,
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.conf());
        cmd
    }

    /// The daemons' logs, for a failure's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path().join("log")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n{}\n", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        out
    }

    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = &dir.path().to_path_buf();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let key = d.join("munge.key");
        // A throwaway key for a cluster that lives as long as this test.
        std::fs::write(&key, common::prng::images_u8("munge key", 1024)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap().trim().to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (ctld_port, d_port) = (port(), port());
        let p = |name: &str| d.join(name).display().to_string();
        let conf = format!(
            "ClusterName=rcaflowtest\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={d_port}\n\
             StateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\nSlurmdPidFile={d_pid}\n\
             SlurmctldLogFile={ctld_log}\nSlurmdLogFile={d_log}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nSchedulerType=sched/builtin\n\
             ReturnToService=2\nJobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nMpiDefault=none\n\
             NodeName={host} CPUs={cpus} State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            socket = p("munge.socket"),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            d_pid = p("slurmd.pid"),
            ctld_log = p("log/slurmctld.log"),
            d_log = p("log/slurmd.log"),
        );
        std::fs::write(d.join("slurm.conf"), conf).unwrap();
        let log = |name: &str| std::fs::File::create(d.join("log").join(name)).unwrap();
        let mut cluster = Cluster { dir, daemons: Vec::new() };
        let munged = Command::new("munged")
            .args(["--foreground", "--force"])
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", p("munge.socket")))
            .arg(format!("--pid-file={}", p("munged.pid")))
            .arg(format!("--log-file={}", p("log/munged.log")))
            .arg(format!("--seed-file={}", p("munged.seed")))
            .stdout(log("munged.out"))
            .stderr(log("munged.err"))
            .spawn()
            .expect("munged");
        cluster.daemons.push(munged);
        let socket = d.join("munge.socket");
        wait_for(|| socket.exists(), "munged's socket", &cluster);
        for (daemon, out) in [("slurmctld", "slurmctld.out"), ("slurmd", "slurmd.out")] {
            let child = cluster
                .command(daemon)
                .arg("-D")
                .arg("-f")
                .arg(cluster.conf())
                .stdout(log(out))
                .stderr(log(&format!("{out}.err")))
                .spawn()
                .expect(daemon);
            cluster.daemons.push(child);
        }
        wait_for(
            || {
                let o = cluster.command("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
                String::from_utf8_lossy(&o.stdout).trim() == "idle"
            },
            "the node to be idle",
            &cluster,
        );
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // slurmd first (it runs the jobs), the controller, then munged.
        for child in self.daemons.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str, cluster: &Cluster) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "waited 60 s for {what}:\n{}", cluster.logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether the Slurm and munge programs are installed and this test may run them (as root);
/// with CI set, their absence fails the test (`.ci/run` installs them).
fn slurm_available() -> bool {
    let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "sinfo"]
        .into_iter()
        .filter(|p| Command::new("sh").arg("-c").arg(format!("command -v {p}")).output().map_or(true, |o| !o.status.success()))
        .collect();
    let root = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap().trim() == "0";
    let ci = std::env::var_os("CI").is_some();
    if !missing.is_empty() || !root {
        let why = if root { format!("missing {}", missing.join(", ")) } else { "not running as root".to_string() };
        assert!(!ci, "CI is set but the Slurm test cannot run: {why} (.ci/run installs slurm-wlm and munge)");
        eprintln!("SKIPPED the_shipped_slurm_job_array_merges_to_the_single_run_report: {why} (apt-get install slurm-wlm munge, as root)");
        return false;
    }
    true
}

/// `root/sweep.toml`: a sweep of `topology` with one variation (the file's own seed, by `--set`) in 3 shards.
fn one_variation_sweep(root: &Path, topology: &Path, sbatch: &[String]) -> PathBuf {
    let file = root.join("sweep.toml");
    let flags: Vec<String> = sbatch.iter().map(|f| format!("{f:?}")).collect();
    let text = format!(
        "topology = {:?}\nroot = \"sweep\"\nshards = 3\n[[variation]]\nname = \"seed-3\"\nset = {{ \"sources.sampler.seed\" = 3 }}\n[slurm]\nsbatch = [{}]\n",
        topology.display().to_string(),
        flags.join(", ")
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Three shards: a sweep's one variation submitted with `sweep submit --slurm` and run by the
/// script it writes, on a one-node Slurm cluster started by the test: the shipped job-array
/// script (`sbatch --array=0-2 --wait`), then the shipped merge script. The merged report is the
/// single run's, and `sweep report` shows it. Without Slurm (outside CI), the same three shards
/// and merge run directly.
#[test]
fn three_shards_of_a_sweep_variation_under_slurm_merge_to_the_single_run_report() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let name = "slurm";
    let topology = tiny_run::write_topology(root, name, 1, None);
    let bin = std::env::var_os("RCAFLOW_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rcaflow")), PathBuf::from);
    // The script's resources are a GPU node's: this one-node CPU cluster overrides them (as a
    // user would for a CPU run, in the sweep's [slurm] flags), nothing else.
    let flags: Vec<String> = ["--wait", "--gres=none", "--cpus-per-task=1", "--mem=0"]
        .iter()
        .map(|f| f.to_string())
        .chain([format!("--output={}/slurm-%A_%a.log", root.display())])
        .collect();
    let sweep = one_variation_sweep(root, &topology, &flags);
    let jobs = root.join("jobs");
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "submit"]).arg(&sweep).arg("--slurm").arg("--out").arg(&jobs));
    assert!(o.success(), "{}", o.stderr);
    let run_dir = root.join("sweep/seed-3");
    let line = o.stdout.lines().find(|l| l.starts_with("jid=$(sbatch")).unwrap_or_else(|| panic!("{}", o.stdout)).to_string();
    assert!(
        line.contains(&format!(
            "--array=0-2 --export=ALL,RCAFLOW_METRICS_BASE=9900 --job-name=rcaflow-seed-3 {} {} {} --set sources.sampler.seed=3)",
            jobs.join("rcaflow-shards.sbatch").display(),
            topology.display(),
            run_dir.display()
        )) && line.contains(&format!(
            "--dependency=afterok:$jid --job-name=rcaflow-merge-seed-3 {} {}",
            jobs.join("rcaflow-merge.sbatch").display(),
            run_dir.display()
        )),
        "{line}"
    );
    assert!(o.stdout.contains(&format!("bash {}", jobs.join("submit-slurm.sh").display())), "{}", o.stdout);
    // The shipped scripts, unchanged.
    for script in ["rcaflow-shards.sbatch", "rcaflow-merge.sbatch"] {
        assert_eq!(std::fs::read(jobs.join(script)).unwrap(), std::fs::read(common::repo().join("deploy/slurm").join(script)).unwrap());
    }
    assert!(std::fs::read_to_string(jobs.join("submit-slurm.sh")).unwrap().contains(&line));
    let plan = read_json(&jobs.join("sweep.json"));
    assert_eq!(plan["variations"][0]["run_dir"].as_str(), Some(run_dir.display().to_string().as_str()));

    if slurm_available() {
        let cluster = Cluster::start();
        let mut cmd = cluster.command("bash");
        cmd.arg(jobs.join("submit-slurm.sh"))
            .env("RCAFLOW", &bin)
            .env("RCAFLOW_DEVICE", "cpu")
            .env("RCAFLOW_METRICS", "off")
            .current_dir(root);
        let o = Ran::of(&mut cmd);
        let logs: String = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("slurm-"))
            .map(|p| format!("--- {}\n{}", p.display(), std::fs::read_to_string(&p).unwrap_or_default()))
            .collect();
        assert!(o.success(), "submit-slurm.sh: {}{}\n{logs}\n{}", o.stdout, o.stderr, cluster.logs());
        drop(cluster);
    } else {
        eprintln!("(running the three shards and the merge directly instead)");
        for k in 0..3 {
            let shard = format!("{k}/3");
            let args = ["run", "--topology", &topology_arg(&topology), "--run-dir", &run_dir.display().to_string(), "--shard", &shard];
            let o = run(root, &[&args[..], &["--set", "sources.sampler.seed=3"]].concat(), None);
            assert!(o.success(), "shard {shard}: {}", o.stderr);
        }
        let dirs: Vec<PathBuf> = (0..3).map(|k| run_dir.join(format!("shard-{k}-of-3"))).collect();
        let o = merge(root, &dirs, &run_dir.join("merged"));
        assert!(o.success(), "{}", o.stderr);
    }
    for k in 0..3 {
        assert!(run_dir.join(format!("shard-{k}-of-3/report.json")).is_file(), "shard {k} did not finish");
    }
    let merged = assert_merged_equals_straight(root, "slurm", &run_dir.join("merged"));

    // The sweep's report: the one variation, complete, with the merged report's numbers.
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "report"]).arg(&jobs).arg("--out").arg(root.join("report")));
    assert!(o.success(), "{}", o.stderr);
    let rows = read_json(&root.join("report/sweep_report.json"))["variations"].clone();
    assert_eq!(rows[0]["status"], "complete");
    assert_eq!(rows[0]["rca"], merged["rca"]["global"]);
    assert_eq!(rows[0]["fid"], merged["fid"]["value"]);
    assert_eq!(rows[0]["generated_images"], 15);
}

/// The shipped Kubernetes files: an Indexed Job whose N pods are N shards (completions =
/// parallelism = the --shard-count its command passes with --shard-from-env), on the claim the
/// file declares (shared by every pod), and a merge Job on the same claim merging every shard.
#[test]
fn the_kubernetes_indexed_job_runs_every_shard_once_on_a_shared_claim() {
    let docs = |file: &str| -> Vec<serde_yaml::Value> {
        let text = std::fs::read_to_string(common::repo().join("deploy/kubernetes").join(file)).unwrap();
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    };
    let shards = docs("rcaflow-shards.yaml");
    let of_kind = |docs: &[serde_yaml::Value], kind: &str| docs.iter().find(|d| d["kind"] == kind).cloned().unwrap();
    let pvc = of_kind(&shards, "PersistentVolumeClaim");
    let claim = pvc["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteMany", "every node's pods mount it");
    let job = of_kind(&shards, "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let n = spec["completions"].as_u64().unwrap();
    assert_eq!(spec["parallelism"].as_u64(), Some(n), "parallelism = completions");
    let pod = &spec["template"]["spec"];
    let command: Vec<&str> = pod["containers"][0]["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&command[..2], ["rcaflow", "run"]);
    assert!(command.contains(&"--shard-from-env"), "{command:?}");
    let count = command.iter().position(|a| *a == "--shard-count").map(|i| command[i + 1]);
    assert_eq!(count, Some(n.to_string().as_str()), "--shard-count = completions");
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"].as_str(), Some(claim.as_str()));
    let run_dir = command.iter().position(|a| *a == "--run-dir").map(|i| command[i + 1]).unwrap();
    let merge = of_kind(&docs("rcaflow-merge.yaml"), "Job");
    let merge_pod = &merge["spec"]["template"]["spec"];
    assert_eq!(merge_pod["volumes"][0]["persistentVolumeClaim"]["claimName"].as_str(), Some(claim.as_str()));
    let line = merge_pod["containers"][0]["command"][2].as_str().unwrap();
    assert!(line.contains(&format!("rcaflow merge {run_dir}/shard-*-of-* --out ")), "{line}");
}

/// `sweep submit --k8s`: per variation the shipped Indexed Job with its shard count, run
/// directory and `--set` arguments, and its merge Job on the same claim; the printed lines name
/// those files and Jobs.
#[test]
fn a_sweep_submitted_to_kubernetes_gets_one_indexed_job_and_one_merge_job_per_variation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = root.join("t.toml");
    // The demo topology, its model paths made absolute (validated, never run, here).
    let demo = std::fs::read_to_string(common::repo().join("topology/demo-rca.toml")).unwrap();
    std::fs::write(&topology, demo.replace("../models/demo", &common::repo().join("models/demo").display().to_string())).unwrap();
    let sweep = root.join("s.toml");
    std::fs::write(
        &sweep,
        "topology = \"t.toml\"\nroot = \"runs\"\nshards = 5\n[grid]\n\"sources.sampler.steps\" = [10, 25]\n\"sources.sampler.scheduler\" = [\"ddim\"]\n[kubernetes]\nimage = \"reg/rcaflow:cuda\"\nclaim = \"lab-runs\"\nmount = \"/data\"\ntopology = \"/data/t.toml\"\nroot = \"/data/sweep\"\n",
    )
    .unwrap();
    let out = root.join("k8s");
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "submit"]).arg(&sweep).arg("--k8s").arg("--out").arg(&out));
    assert!(o.success(), "{}", o.stderr);
    let docs = |file: &str| -> Vec<serde_yaml::Value> {
        let text = std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    };
    let claim = &docs("claim.yaml")[0];
    assert_eq!((claim["kind"].as_str(), claim["metadata"]["name"].as_str()), (Some("PersistentVolumeClaim"), Some("lab-runs")));
    for (i, name) in ["scheduler-ddim_steps-10", "scheduler-ddim_steps-25"].iter().enumerate() {
        let job = &docs(&format!("{name}.yaml"))[0];
        let job_name = job["metadata"]["name"].as_str().unwrap();
        assert_eq!(job_name, format!("rcaflow-{i}-{name}").replace('_', "-"));
        let spec = &job["spec"];
        assert_eq!(
            (spec["completionMode"].as_str(), spec["completions"].as_u64(), spec["parallelism"].as_u64()),
            (Some("Indexed"), Some(5), Some(5))
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"].as_str(), Some("reg/rcaflow:cuda"));
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"].as_str(), Some("lab-runs"));
        let command: Vec<&str> = pod["containers"][0]["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let after = |flag: &str| command.iter().position(|a| *a == flag).map(|i| command[i + 1]);
        assert_eq!((after("--topology"), after("--shard-count")), (Some("/data/t.toml"), Some("5")));
        assert_eq!(after("--run-dir"), Some(format!("/data/sweep/{name}").as_str()));
        assert!(command.contains(&"--shard-from-env"), "{command:?}");
        let sets: Vec<&str> = command.windows(2).filter(|w| w[0] == "--set").map(|w| w[1]).collect();
        let steps = if i == 0 { "10" } else { "25" };
        assert_eq!(sets, ["sources.sampler.scheduler=\"ddim\"", &format!("sources.sampler.steps={steps}")]);
        let merge = &docs(&format!("{name}-merge.yaml"))[0];
        let line = merge["spec"]["template"]["spec"]["containers"][0]["command"][2].as_str().unwrap();
        assert_eq!(line, format!("exec rcaflow merge /data/sweep/{name}/shard-*-of-* --out /data/sweep/{name}/merged --device cpu"));
        let printed = format!(
            "kubectl apply -f {} && kubectl wait --for=condition=complete --timeout=48h job/{job_name} && kubectl apply -f {}",
            out.join(format!("{name}.yaml")).display(),
            out.join(format!("{name}-merge.yaml")).display()
        );
        assert!(o.stdout.contains(&printed), "{printed}\nin:\n{}", o.stdout);
    }
    // The root the pods see must be on the claim; a second submit into a folder of other files is refused.
    std::fs::write(&sweep, std::fs::read_to_string(&sweep).unwrap().replace("root = \"/data/sweep\"", "root = \"/elsewhere\"")).unwrap();
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "submit"]).arg(&sweep).arg("--k8s").arg("--out").arg(root.join("k8s-2")));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("kubernetes.root = \"/elsewhere\" is not on the claim (mounted at kubernetes.mount = \"/data\")"),
        "{}",
        o.stderr
    );
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "submit"]).arg(&sweep).arg("--slurm").arg("--out").arg(root));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("holds other files"), "{}", o.stderr);
}

/// `sweep report` over four variations: a complete merged report, a partial one, shards not
/// merged yet, and nothing at all. The table (md, csv, json) holds each one's numbers (taken from
/// the single run's real report.json, with numbers changed) or why it has none; the figure is
/// written and lists those without numbers.
#[test]
fn a_sweep_report_tables_every_variation_and_draws_the_complete_and_partial_ones() {
    let (_, straight_report) = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("t.toml"), "").unwrap();
    let sweep = root.join("s.toml");
    std::fs::write(&sweep, "topology = \"t.toml\"\nroot = \"runs\"\nshards = 2\n[grid]\n\"sources.sampler.steps\" = [10, 25, 50, 100]\n")
        .unwrap();
    let merged = |name: &str, rca: f64, fid: f64, kid: Option<f64>, status: &str| {
        let dir = root.join("runs").join(name).join("merged");
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = straight_report.clone();
        r["status"] = status.into();
        r["rca"]["global"] = rca.into();
        r["fid"]["value"] = fid.into();
        if let Some(k) = kid {
            r["kid"] = serde_json::json!({ "mean": k, "std": 0.001 });
        }
        std::fs::write(dir.join("report.json"), serde_json::to_vec(&r).unwrap()).unwrap();
        let record = serde_json::json!({ "complete": status == "complete", "shards": [{ "units_done": 4, "units_planned": 6 }, { "units_done": 6, "units_planned": 6 }] });
        std::fs::write(dir.join("merge.json"), serde_json::to_vec(&record).unwrap()).unwrap();
    };
    merged("steps-10", 0.625, 212.5, Some(0.0125), "complete");
    merged("steps-25", 0.875, 150.25, None, "partial");
    let started = root.join("runs/steps-50/shard-1-of-2");
    std::fs::create_dir_all(&started).unwrap();
    std::fs::write(started.join("run.json"), "{}").unwrap();
    let out = root.join("report");
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "report"]).arg(&sweep).arg("--out").arg(&out));
    assert!(o.success(), "{}", o.stderr);
    assert!(
        o.stderr.contains("3 of 4 variations are not complete: steps-25 (partial), steps-50 (not merged), steps-100 (missing)"),
        "{}",
        o.stderr
    );
    let md = std::fs::read_to_string(out.join("sweep_report.md")).unwrap();
    assert!(o.stdout.contains(&md));
    let is = straight_report["inception_score"]["mean"].as_f64().unwrap();
    let lpips = straight_report["lpips_diversity"]["mean"].as_f64().unwrap();
    let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("| steps-")).collect();
    assert_eq!(lines.len(), 4, "{md}");
    assert!(
        lines[0].starts_with(&format!(
            "| steps-10 | complete | 0.6250 | 212.5000 | 0.012500 | {is:.4} | {lpips:.4} | 15 | `sources.sampler.steps=10` |"
        )),
        "{md}"
    );
    assert!(
        lines[1].starts_with("| steps-25 | partial (merged from unfinished shards: 10/12 units done) | 0.8750 | 150.2500 |  |"),
        "{md}"
    );
    assert!(lines[2].starts_with("| steps-50 | not merged (1/2 shards started, 0 finished; no merged/report.json yet) |  |  |"), "{md}");
    assert!(lines[3].starts_with("| steps-100 | missing (no shard has started"), "{md}");
    let csv = std::fs::read_to_string(out.join("sweep_report.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0][..9],
        ["variation", "status", "detail", "rca", "fid", "kid", "inception_score", "lpips_diversity", "generated_images"]
    );
    assert_eq!(rows[1][..6], ["steps-10", "complete", "", "0.625", "212.5", "0.0125"]);
    assert_eq!(rows[2][..6], ["steps-25", "partial", "merged from unfinished shards: 10/12 units done", "0.875", "150.25", ""]);
    assert_eq!(rows[4][..4], ["steps-100", "missing", rows[4][2], ""]);
    let json = read_json(&out.join("sweep_report.json"));
    assert_eq!(json["variations"].as_array().unwrap().len(), 4);
    assert_eq!(json["variations"][0]["kid"], 0.0125);
    assert_eq!(json["variations"][3]["run_dir"].as_str(), Some(root.join("runs/steps-100").display().to_string().as_str()));
    let png = std::fs::read(out.join("tradeoff.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let image = image::load_from_memory(&png).unwrap();
    // Two panels (FID and KID: one variation has KID) side by side.
    assert!(image.width() > 2 * 480 && image.height() > 360, "{}x{}", image.width(), image.height());
    // A folder without sweep.json is refused, naming it.
    let o = Ran::of(rcaflow_checkpointing(root).args(["sweep", "report"]).arg(root.join("runs")).arg("--out").arg(&out));
    assert_eq!(o.code(), Some(2));
    assert!(o.stderr.contains("no readable sweep.json") && !o.stderr.trim().contains('\n'), "{}", o.stderr);
}
