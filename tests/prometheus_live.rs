//! The Prometheus and Grafana side, checked against a real Prometheus scraping a real run:
//!
//! 1. `promtool check config` / `check rules` / `test rules` on the shipped files;
//! 2. the dashboard JSON's structure (schema version, uid, datasource and run variables, a unit
//!    and a description on every panel) and its metrics against `src/telemetry.rs`: every metric
//!    it uses is one rcaflow exports, every exported one is on a panel or in [`NOT_SHOWN`];
//! 3. a real `prometheus` (the shipped `config/prometheus.yml` and rules, with a 1 s scrape
//!    interval and a free port) scrapes a tiny `rcaflow run` that exercises every metric; every
//!    PromQL expression of the dashboard, template variables substituted, is evaluated through
//!    Prometheus' HTTP API while the run goes on (from its fifth scrape, until all of them return
//!    a finite value, or a series for the metrics set at the end, [`SET_AT_THE_END`]) or, should
//!    the run reach its end first, at its last scrape; the run then ends by itself, after
//!    Prometheus has scraped its final values (`[metrics] final_scrape_wait_secs`), and every
//!    metric of [`SET_AT_THE_END`] has a finite value in Prometheus at that last scrape;
//!    the run variable's label values must name the run; every alert rule must evaluate cleanly;
//! 4. `promtool check metrics` on the run's last live scrape reports no problem, and that scrape
//!    holds exactly the families `src/telemetry.rs` lists.
//!
//! Skipped, with a message, when `prometheus` or `promtool` is not on PATH, unless `CI` is set:
//! then their absence fails (`.ci/run` installs Debian's `prometheus` package). A second test,
//! which needs neither, checks that the README's metric table lists exactly those metrics.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tiny_run;
use common::topology::{Sampler, Topology};
use serde_json::Value;

/// rcaflow metrics the dashboard leaves out on purpose, and why.
const NOT_SHOWN: &[(&str, &str)] = &[(
    "rcaflow_stage_batches_total",
    "the same count as rcaflow_stage_batch_duration_seconds_count, which the latency panel's histogram carries",
)];

/// Metrics set once, when their sink's inputs close, and NaN before: their panels' queries must
/// return a series, which may still be NaN while the run goes on; the run's last scrape, which
/// it waits for before it exits, holds their final, finite values.
const SET_AT_THE_END: &[&str] = &[
    "rcaflow_class_fid",
    "rcaflow_kid",
    "rcaflow_class_kid",
    "rcaflow_precision_ratio",
    "rcaflow_recall_ratio",
    "rcaflow_density",
    "rcaflow_coverage_ratio",
];

/// What the run logs when it waits for the scrape that carries its final values.
const FINAL_WAIT: &str = "serving metrics until one more scrape carries them";

/// Prefix of the metrics `rcaflow train` exports while it trains: not part of a run, so neither
/// on the run dashboard nor in a run's scrape (the README lists them with the others).
const TRAINING_PREFIX: &str = "rcaflow_train_";

/// The metrics a `rcaflow run` exports: every name in src/telemetry.rs but the training ones.
fn run_metrics() -> BTreeSet<String> {
    exported_metrics().into_iter().filter(|m| !m.starts_with(TRAINING_PREFIX)).collect()
}

/// The run label of the live run (the run directory's name).
const RUN: &str = "live-run";

/// Window substituted for `$__rate_interval`: Grafana derives it from the panel's resolution and
/// the datasource's scrape interval; here one window spans the whole tiny run, so every stage
/// that worked while Prometheus watched has samples in it.
const RATE_INTERVAL: &str = "30s";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` on PATH, if there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` from `addr`: (status code, body). HTTP/1.0, so the body is never chunked.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// A Prometheus API call that must succeed; returns its `data`.
fn api(prom: &str, path: &str) -> Value {
    let (code, body) = http_get(prom, path).unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus {path}: HTTP {code}, not JSON ({e}): {body}"));
    assert!(code == 200 && v["status"] == "success", "prometheus {path}: HTTP {code}: {body}");
    v["data"].clone()
}

fn promtool(promtool: &Path, args: &[&str]) {
    let o = Command::new(promtool).args(args).current_dir(repo()).output().unwrap();
    assert!(
        o.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Metric names `src/telemetry.rs` defines (`pub const X: &str = "rcaflow_...";`).
fn exported_metrics() -> BTreeSet<String> {
    let src = std::fs::read_to_string(repo().join("src/telemetry.rs")).unwrap();
    let names: BTreeSet<String> = src
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains(": &str = \"rcaflow_"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect();
    assert!(names.len() > 10, "found only {names:?} in src/telemetry.rs: has its style changed?");
    names
}

/// `rcaflow_*` metric names an expression mentions, histogram series mapped to their family.
fn metrics_in(expr: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rcaflow_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family =
            ["_bucket", "_sum", "_count"].iter().filter_map(|s| name.strip_suffix(s)).find(|base| exported.contains(*base)).unwrap_or(name);
        found.insert(family.to_string());
        rest = &tail[end..];
    }
    found
}

/// Every `expr` in the dashboard, with the title of the panel it belongs to.
fn dashboard_exprs(v: &Value, panel: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(panel);
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", Value::String(expr)) => out.push((title.to_string(), expr.clone())),
                    _ => dashboard_exprs(child, title, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| dashboard_exprs(c, panel, out)),
        _ => {}
    }
}

/// Every panel, rows' collapsed panels included (rows themselves excluded).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("dashboard has panels") {
        if p["type"] == "row" {
            all.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            all.push(p);
        }
    }
    all
}

/// An expression as Grafana sends it for the live run.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("${run}", RUN)
        .replace("$run", RUN)
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", "1s")
        .replace("$__range", RATE_INTERVAL);
    assert!(!out.contains('$'), "dashboard expression uses a variable this test does not know: {expr}");
    out
}

/// Every datasource reference in the dashboard (panels, targets, variables).
fn datasource_refs<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "datasource" {
                    out.push(child);
                } else {
                    datasource_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| datasource_refs(c, out)),
        _ => {}
    }
}

/// Static checks of the dashboard JSON: what Grafana needs, and what the issue asks of it.
fn check_dashboard_structure(d: &Value) {
    assert_eq!(d["schemaVersion"], 42, "schemaVersion: the classic JSON model's current version is 42");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "dashboard needs a uid of at most 40 characters");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no `{name}` variable"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("run")["type"], "query");
    let run_query = var("run")["query"]["query"].as_str().expect("run variable query");
    assert!(run_query.starts_with("label_values(") && run_query.ends_with(", run)"), "run variable: {run_query}");
    let mut refs = Vec::new();
    datasource_refs(d, &mut refs);
    for r in refs {
        // The built-in annotation source is Grafana itself; everything else goes through the
        // variable, never a hard-coded uid.
        if r["type"] == "grafana" {
            continue;
        }
        assert_eq!(r, &serde_json::json!({"type": "prometheus", "uid": "${datasource}"}), "datasource must be the variable");
    }
    let mut ids = BTreeSet::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id in \"{title}\"");
        assert!(p["description"].as_str().is_some_and(|s| s.len() > 20), "panel \"{title}\" has no description");
        assert!(p["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|s| !s.is_empty()), "panel \"{title}\" has no unit");
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel \"{title}\" has no query");
    }
}

/// The rcaflow run's topology: a `ddpm_sampler` (a tiny random-weight UNet, 3 steps) and a real
/// image folder (with one corrupt file) through a batcher to the oracle (rca) and to Inception
/// (fid, inception_score), and to lpips_diversity; enough images that the run spans several
/// scrapes (Inception on the CPU sets the pace).
fn write_run(root: &Path) -> PathBuf {
    tiny_run::write_real(root, 2, 32);
    std::fs::write(root.join("real").join("azure").join("zzz-corrupt.png"), b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    tiny_run::write_oracle(root);
    let mut stop_when = toml::Table::new();
    stop_when.insert("ci_half_width".into(), 0.49.into());
    stop_when.insert("min_per_class".into(), 2.into());
    // tests/sampler.rs' 3-class UNet at 32x32, random Inception and LPIPS weights.
    tiny_run::write_networks(root);
    Topology::new(RUN)
        .set("run", "default_capacity", 2)
        .image_folder("real", "real")
        .set("sources.real", "unit_size", 2)
        .sampler("sampler", "ddpm", Sampler { steps: 3, per_class: 2, unit_size: 1, seed: 1 })
        .evaluation("sampler", 2, 2)
        .set("sinks.fid", "interval_secs", 0.5)
        .set("sinks.fid", "per_class", true)
        .sink("kid", "kid", &["inception"])
        .set("sinks.kid", "per_class", true)
        .sink("prc", "precision_recall", &["inception"])
        // Holds only at the last unit (2 images a class): the early-stop gauges are exported
        // and the run samples its whole plan.
        .set("sinks.rca", "stop_when", stop_when)
        .set("sinks.report", "inputs", vec!["rca", "fid", "inception_score", "lpips", "kid", "prc"])
        .set("sinks.report", "figures", false)
        .write(&root.join("live.toml"))
}

#[test]
fn readme_metric_table_lists_exactly_the_exported_metrics() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme.split("\n## Metrics\n").nth(1).expect("README has a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let exported = exported_metrics();
    let mut listed = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `rcaflow_")) {
        let names = row.split('|').nth(1).unwrap();
        listed.extend(metrics_in(names, &exported));
    }
    assert_eq!(listed, exported, "README's metric table (left) vs src/telemetry.rs (right)");
}

/// The shipped `config/prometheus.yml`, scraping `target` every second, with absolute rules.
fn prometheus_config(target: &str) -> String {
    let shipped = std::fs::read_to_string(repo().join("config/prometheus.yml")).unwrap();
    let rules = repo().join("config/rcaflow-rules.yml");
    let mut config = shipped.clone();
    for (from, to) in [
        ("scrape_interval: 5s", "scrape_interval: 1s".to_string()),
        ("evaluation_interval: 5s", "evaluation_interval: 1s".to_string()),
        ("\"127.0.0.1:9898\"", format!("\"{target}\"")),
        ("- rcaflow-rules.yml", format!("- {}", rules.display())),
    ] {
        assert_eq!(shipped.matches(from).count(), 1, "config/prometheus.yml should contain `{from}` once (the test adapts it)");
        config = config.replace(from, &to);
    }
    config
}

#[test]
fn dashboard_queries_and_alert_rules_work_against_a_real_prometheus_scraping_a_run() {
    let (prometheus, promtool_bin) = match (on_path("prometheus"), on_path("promtool")) {
        (Some(p), Some(t)) => (p, t),
        _ if std::env::var_os("CI").is_some() => {
            panic!("prometheus and promtool must be on PATH in CI (.ci/run installs Debian's prometheus package)")
        }
        _ => {
            eprintln!(
                "SKIPPED prometheus_live: prometheus or promtool not on PATH (apt-get install prometheus); set CI=1 to make this a failure"
            );
            return;
        }
    };
    let started = Instant::now();

    // 1. The shipped Prometheus files.
    promtool(&promtool_bin, &["check", "config", "config/prometheus.yml"]);
    promtool(&promtool_bin, &["check", "rules", "config/rcaflow-rules.yml"]);
    promtool(&promtool_bin, &["test", "rules", "config/rcaflow-rules.test.yml"]);

    // 2. The dashboard, statically.
    let dashboard: Value = serde_json::from_slice(&std::fs::read(repo().join("grafana/dashboards/rcaflow.json")).unwrap()).unwrap();
    check_dashboard_structure(&dashboard);
    let exported = run_metrics();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], "", &mut exprs);
    let run_var = dashboard["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "run").unwrap();
    let run_query = run_var["query"]["query"].as_str().unwrap();
    let run_var_metric = run_query.trim_start_matches("label_values(").split(',').next().unwrap().trim().to_string();
    let mut used = BTreeSet::new();
    for (panel, expr) in &exprs {
        for m in metrics_in(expr, &exported) {
            assert!(exported.contains(&m), "panel \"{panel}\" uses {m}, which src/telemetry.rs does not define: {expr}");
            used.insert(m);
        }
    }
    assert!(exported.contains(&run_var_metric), "the run variable reads {run_var_metric}, which rcaflow does not export");
    for (name, why) in NOT_SHOWN {
        assert!(exported.contains(*name), "NOT_SHOWN lists {name}, which rcaflow does not export");
        assert!(!used.contains(*name), "NOT_SHOWN lists {name} ({why}), but a panel shows it: drop it from the list");
    }
    for name in &exported {
        assert!(
            used.contains(name) || NOT_SHOWN.iter().any(|(n, _)| n == name),
            "{name} is on no panel of grafana/dashboards/rcaflow.json; add a panel or list it in NOT_SHOWN with a reason"
        );
    }

    // 3. A real Prometheus with the shipped config, then the run it scrapes.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = write_run(root);
    let (prom_addr, metrics_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    std::fs::write(root.join("prometheus.yml"), prometheus_config(&metrics_addr)).unwrap();
    let prom_log = root.join("prometheus.log");
    let _prometheus = Reaped(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", root.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", root.join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(&prom_addr, "/-/ready"), Ok((200, _))) {
        assert!(Instant::now() < deadline, "prometheus not ready in 60 s:\n{}", std::fs::read_to_string(&prom_log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }

    let run_log = root.join("rcaflow.log");
    let mut run = Reaped(
        common::bin::rcaflow()
            .args(["run", "--metrics-addr", &metrics_addr, "--topology"])
            .arg(&topology)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&run_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let queries: Vec<(String, String)> = exprs.iter().map(|(panel, expr)| (panel.clone(), substitute(expr))).collect();

    // While the run goes on: scrape its exporter, and ask Prometheus every dashboard query until
    // all of them return data after several scrapes. Should the run end first, the queries are
    // asked once more at its last scrape, and must pass there.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_scrape = String::new();
    let (mut scrapes, mut last_failure) = (0.0, String::from("not asked yet"));
    let live_checked = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(&run_log).unwrap_or_default();
            assert!(status.success(), "rcaflow run failed ({status}):\n{log}");
            break false;
        }
        // Once the run waits for the scrape that carries its final values, only Prometheus
        // scrapes it: a scrape by this test would end the wait.
        if std::fs::read_to_string(&run_log).unwrap_or_default().contains(FINAL_WAIT) {
            break false;
        }
        assert!(
            Instant::now() < deadline,
            "after 600 s, still no data for a query ({last_failure}):\n{}",
            std::fs::read_to_string(&run_log).unwrap_or_default()
        );
        if let Ok((200, body)) = http_get(&metrics_addr, "/metrics") {
            let complete = families(&body) == exported;
            last_scrape = body;
            scrapes = first_value(&api(&prom_addr, &format!("/api/v1/query?query={}", encode("sum_over_time(up{job=\"rcaflow\"}[10m])"))));
            if scrapes >= 5.0 && complete {
                match check_queries(&prom_addr, &queries, None) {
                    Ok(()) => break true,
                    Err(e) => last_failure = e,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let queries_done = started.elapsed().as_secs_f64();
    // The run ends by itself: after its final values, it serves metrics until Prometheus has
    // scraped them once more (`[metrics] final_scrape_wait_secs`, 60 s by default; one scrape
    // interval here).
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the run did not end in 300 s:\n{}", std::fs::read_to_string(&run_log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&run_log).unwrap_or_default();
    assert!(status.success(), "rcaflow run failed ({status}):\n{log}");
    assert!(log.contains(FINAL_WAIT) && log.contains("final values scraped after"), "the run's final wait:\n{log}");
    // Wait for the scrape that finds the run gone, so every scrape of the run is stored.
    let up_query = format!("/api/v1/query?query={}", encode("up{job=\"rcaflow\"}[10m]"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let data = api(&prom_addr, &up_query);
        let samples: Vec<(Value, String)> = data["result"][0]["values"]
            .as_array()
            .map(|vs| vs.iter().map(|s| (s[0].clone(), s[1].as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default();
        if samples.last().is_some_and(|(_, v)| v == "0") {
            break samples;
        }
        assert!(Instant::now() < deadline, "prometheus never saw the run end: {data}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let live: Vec<&Value> = samples.iter().filter(|(_, v)| v == "1").map(|(t, _)| t).collect();
    let at = live.last().expect("prometheus scraped the run").to_string();
    if !live_checked {
        scrapes = live.len() as f64;
        assert!(scrapes >= 5.0, "prometheus scraped the run only {scrapes} times (need 5 or more; the run is too short): {samples:?}");
        if let Err(e) = check_queries(&prom_addr, &queries, Some(&at)) {
            panic!("at the run's last scrape: {e}");
        }
    }
    // The metrics set at the end are in Prometheus, with a finite value, at the run's last scrape.
    for name in SET_AT_THE_END {
        let query = format!("{name}{{run=\"{RUN}\"}}");
        let data = api(&prom_addr, &format!("/api/v1/query?query={}&time={at}", encode(&query)));
        let values: Vec<f64> =
            data["result"].as_array().into_iter().flatten().filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok()).collect();
        assert!(!values.is_empty() && values.iter().all(|v| v.is_finite()), "{name} at the run's last scrape: {data}");
    }
    let checks_done = started.elapsed().as_secs_f64();

    // The run variable: its label values name the run.
    let values = api(&prom_addr, &format!("/api/v1/label/run/values?match[]={}", encode(&run_var_metric)));
    assert!(values.as_array().is_some_and(|v| v.iter().any(|r| r == RUN)), "run variable values {values} lack {RUN}");

    // Every alert rule was loaded from the shipped file and evaluates cleanly on live data.
    let rules = api(&prom_addr, "/api/v1/rules");
    let rules: Vec<&Value> = rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["RcaflowChannelSaturated", "RcaflowNonFiniteImages", "RcaflowRunStalled", "RcaflowStageErrors"]),
        "alert rules loaded"
    );
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} evaluates with an error: {}", r["name"], r["lastError"]);
        for m in metrics_in(r["query"].as_str().unwrap(), &exported) {
            assert!(exported.contains(&m), "rule {} uses {m}, which rcaflow does not export", r["name"]);
        }
    }

    // 4. The live scrape: promtool finds no problem, and it holds exactly the listed families.
    let mut check = Command::new(&promtool_bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(last_scrape.as_bytes()).unwrap();
    let o = check.wait_with_output().unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && complaints.trim().is_empty(), "promtool check metrics on the live scrape:\n{complaints}");
    assert_eq!(families(&last_scrape), exported, "families of the live scrape vs src/telemetry.rs");
    for line in last_scrape.lines().filter(|l| l.starts_with("rcaflow_")) {
        assert!(line.contains(&format!("run=\"{RUN}\"")), "series without the run label: {line}");
    }
    eprintln!(
        "prometheus_live: {} dashboard queries returned data {} after {scrapes} scrapes, {queries_done:.1} s into the test; the run ended and its final values were in Prometheus at {checks_done:.1} s (test {:.1} s)",
        queries.len(),
        if live_checked { "while the run went on" } else { "at the run's last scrape" },
        started.elapsed().as_secs_f64()
    );
}

/// Metric families (`# TYPE` lines) of a scrape.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// The first series' value of an instant query's result (NaN when there is none).
fn first_value(data: &Value) -> f64 {
    data["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Asks Prometheus every query (at `at`, else now); each must return at least one series with
/// a finite value. The first that does not is the error.
fn check_queries(prom: &str, queries: &[(String, String)], at: Option<&str>) -> Result<(), String> {
    let time = at.map(|t| format!("&time={t}")).unwrap_or_default();
    for (panel, query) in queries {
        let data = api(prom, &format!("/api/v1/query?query={}{time}", encode(query)));
        let result = data["result"].as_array().ok_or_else(|| format!("panel \"{panel}\": no result array: {data}"))?;
        if result.is_empty() {
            return Err(format!("panel \"{panel}\": no data for {query}"));
        }
        let finite = result.iter().any(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite));
        let at_the_end = metrics_in(query, &exported_metrics()).iter().all(|m| SET_AT_THE_END.contains(&m.as_str()));
        if !finite && !at_the_end {
            return Err(format!("panel \"{panel}\": no finite value for {query}: {data}"));
        }
    }
    Ok(())
}
