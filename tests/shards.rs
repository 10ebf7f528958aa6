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

#[test]
fn one_two_and_three_shards_merge_to_the_single_run_report() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for n in 1..=3u32 {
        let name = format!("n{n}");
        let topology = tiny_run::write_topology(root, &name, 1, None);
        for k in 0..n {
            run_shard(root, &topology, k, n);
        }
        let dirs = shard_dirs(root, &name, n);
        // Each shard ran its own units only, and says so.
        let first: Value = read_json(&dirs[0].join("run.json"));
        assert_eq!(first["shard"], serde_json::json!({ "index": 0, "count": n }));
        let status = Ran::of(rcaflow_checkpointing(root).arg("status").arg(&dirs[0]));
        assert!(status.stdout.contains(&format!("shard 0/{n}: its own units only")), "{}", status.stdout);
        let out = root.join(format!("merged-{name}"));
        // Given in reverse order: the order on the command line does not matter.
        let mut reversed = dirs.clone();
        reversed.reverse();
        let o = merge(root, &reversed, &out);
        assert!(o.success(), "merge of {n} shards: {}", o.stderr);
        assert!(o.stdout.contains(&format!("merged {n} shards into")), "{}", o.stdout);
        let merged = assert_merged_equals_straight(root, &name, &out);
        assert_eq!(merged["status"], "complete");
        let record = read_json(&out.join("merge.json"));
        assert_eq!(record["complete"], true);
        assert_eq!(record["shards"].as_array().unwrap().len(), n as usize);
        // Merging again into the same folder replaces the earlier merge.
        if n == 2 {
            let o = merge(root, &dirs, &out);
            assert!(o.success(), "{}", o.stderr);
            assert_merged_equals_straight(root, &name, &out);
        }
    }
}

#[test]
fn a_killed_shard_merges_as_partial_then_resumes_and_merges_whole() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let name = "killed";
    let topology = tiny_run::write_topology(root, name, 1, None);
    let t = topology_arg(&topology);
    run_shard(root, &topology, 0, 2);
    // Shard 1 dies at once (as SIGKILL would) after its sampler recorded its 2nd unit.
    let o = run(root, &["run", "--topology", &t, "--shard", "1/2"], Some("abort@sampler.unit:2"));
    assert!(o.code().is_none(), "the shard should have died: {}", o.stderr);
    let dirs = shard_dirs(root, name, 2);
    assert!(!dirs[1].join("report.json").exists());

    // A live merge of what is on disk: a partial report, saying how far shard 1 was.
    let out = root.join("merged");
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

    // Resumed, it finishes its units; the merge is then the single run's.
    let o = run(root, &["run", "--topology", &t, "--shard", "1/2"], None);
    assert!(o.success(), "resume: {}", o.stderr);
    let sessions = read_json(&dirs[1].join("run.json"))["sessions"].as_array().unwrap().len();
    assert_eq!(sessions, 2, "the killed start and the resume (the refused start recorded nothing)");
    let o = merge(root, &dirs, &out);
    assert!(o.success(), "{}", o.stderr);
    assert_merged_equals_straight(root, name, &out);
    assert_eq!(read_json(&out.join("merge.json"))["complete"], true);
}

#[test]
fn merge_refuses_a_missing_a_duplicated_and_a_foreign_shard_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "ours", 1, None);
    for k in 0..2 {
        run_shard(root, &topology, k, 2);
    }
    // The same models, another seed: shard 1 of another run.
    let foreign = tiny_run::write_topology(root, "theirs", 1, None);
    std::fs::write(&foreign, std::fs::read_to_string(&foreign).unwrap().replace("seed = 3", "seed = 4")).unwrap();
    run_shard(root, &foreign, 1, 2);
    let ours = shard_dirs(root, "ours", 2);
    let theirs = shard_dirs(root, "theirs", 2);
    let out = root.join("merged");
    let refused = |dirs: &[PathBuf], expected: &[&str]| {
        let o = merge(root, dirs, &out);
        assert_eq!(o.code(), Some(2), "{dirs:?}: {}", o.stderr);
        let line = o.stderr.trim();
        assert!(!line.contains('\n'), "one line: {line}");
        for e in expected {
            assert!(line.contains(e), "{dirs:?}: expected {e:?} in: {line}");
        }
        assert!(!out.join("report.json").exists(), "nothing merged");
    };
    refused(&ours[..1], &["shard 1/2 is missing (its directory is shard-1-of-2); given shards 0 of 2"]);
    refused(&[ours[0].clone(), ours[1].clone(), ours[0].clone()], &["shard 0/2 is given twice", &ours[0].display().to_string()]);
    refused(
        &[ours[0].clone(), theirs[1].clone()],
        &[&format!("shard directory \"{}\" holds a run of another topology", theirs[1].display()), "sources.sampler changed (seed)"],
    );
    refused(&[root.join("nowhere")], &["nowhere\": no run.json"]);
    refused(&[root.join("run-ours")], &["no run.json"]);
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

#[test]
fn the_shipped_slurm_job_array_merges_to_the_single_run_report() {
    if !slurm_available() {
        return;
    }
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let name = "slurm";
    let topology = tiny_run::write_topology(root, name, 1, None);
    let run_dir = root.join(format!("run-{name}"));
    let cluster = Cluster::start();
    let scripts = common::repo().join("deploy/slurm");
    let bin = std::env::var_os("RCAFLOW_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rcaflow")), PathBuf::from);
    let export = format!("--export=ALL,RCAFLOW={},RCAFLOW_DEVICE=cpu,RCAFLOW_METRICS=off", bin.display());
    // The script's resources are a GPU node's: this one-node CPU cluster overrides them on the
    // command line (as a user would for a CPU run), nothing else.
    let sbatch = |extra: &[&str], script: &str, args: &[&Path]| {
        let mut cmd = cluster.command("sbatch");
        cmd.args(["--wait", "--gres=none", "--cpus-per-task=1", "--mem=0", &export])
            .arg(format!("--output={}/slurm-%A_%a.log", root.display()))
            .args(extra)
            .arg(scripts.join(script))
            .args(args)
            .current_dir(root);
        let o = Ran::of(&mut cmd);
        let logs: String = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("slurm-"))
            .map(|p| format!("--- {}\n{}", p.display(), std::fs::read_to_string(&p).unwrap_or_default()))
            .collect();
        assert!(o.success(), "sbatch {script}: {}{}\n{logs}\n{}", o.stdout, o.stderr, cluster.logs());
    };
    sbatch(&["--array=0-2"], "rcaflow-shards.sbatch", &[&topology, &run_dir]);
    for k in 0..3 {
        assert!(run_dir.join(format!("shard-{k}-of-3/report.json")).is_file(), "shard {k} did not finish");
    }
    sbatch(&[], "rcaflow-merge.sbatch", &[&run_dir]);
    assert_merged_equals_straight(root, name, &run_dir.join("merged"));
    drop(cluster);
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
