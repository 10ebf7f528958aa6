//! `rcaflow sweep report FILE|DIR --out DIR`: every variation's merged report
//! (`ROOT/NAME/merged/report.json`, what the sweep's merge jobs write) in one table
//! (sweep_report.md, .csv, .json) and the trade-off figure (tradeoff.png: FID, and KID where
//! measured, against RCA; [`crate::report::figures::tradeoff`]). A variation without a merged
//! report is a row that says why (`missing`: nothing ran; `not merged`: shards, no merge yet;
//! `unreadable`), a partial one is marked `partial`: none is dropped.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::submit::PlanRecord;

/// What one variation's row holds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub set: Vec<String>,
    pub run_dir: PathBuf,
    /// complete | partial | interrupted (a merged report), not merged | missing | unreadable.
    pub status: String,
    /// Why there are no numbers, or how far the shards were.
    pub detail: Option<String>,
    pub rca: Option<f64>,
    pub fid: Option<f64>,
    pub kid: Option<f64>,
    pub inception_score: Option<f64>,
    pub lpips_diversity: Option<f64>,
    pub generated_images: Option<u64>,
}

impl Row {
    /// Reads variation `name`'s merged report in `run_dir`.
    pub fn read(name: &str, set: &[String], run_dir: &Path, shards: u32) -> Row {
        let mut row = Row {
            name: name.to_string(),
            set: set.to_vec(),
            run_dir: run_dir.to_path_buf(),
            status: String::new(),
            detail: None,
            rca: None,
            fid: None,
            kid: None,
            inception_score: None,
            lpips_diversity: None,
            generated_images: None,
        };
        let path = run_dir.join("merged").join("report.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                let started = (0..shards).filter(|k| run_dir.join(format!("shard-{k}-of-{shards}")).join("run.json").is_file()).count();
                let finished = (0..shards).filter(|k| run_dir.join(format!("shard-{k}-of-{shards}")).join("report.json").is_file()).count();
                if started == 0 {
                    row.status = "missing".into();
                    row.detail = Some(format!("no shard has started: no {}/shard-K-of-{shards}", run_dir.display()));
                } else {
                    row.status = "not merged".into();
                    row.detail = Some(format!("{started}/{shards} shards started, {finished} finished; no merged/report.json yet"));
                }
                return row;
            }
        };
        let report: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                row.status = "unreadable".into();
                row.detail = Some(format!("\"{}\": {e}", path.display()));
                return row;
            }
        };
        let number = |pointer: &str| report.pointer(pointer).and_then(Value::as_f64);
        row.status = report.get("status").and_then(Value::as_str).unwrap_or("unreadable").to_string();
        row.rca = number("/rca/global");
        row.fid = number("/fid/value");
        row.kid = number("/kid/mean");
        row.inception_score = number("/inception_score/mean");
        row.lpips_diversity = number("/lpips_diversity/mean");
        row.generated_images = report.pointer("/generated/total").and_then(Value::as_u64);
        if row.status == "partial" {
            let record: Option<Value> =
                std::fs::read(run_dir.join("merged").join("merge.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let shards = record.as_ref().and_then(|r| r["shards"].as_array().cloned());
            row.detail = Some(match shards {
                Some(shards) => {
                    let units = |key: &str| shards.iter().filter_map(|s| s[key].as_u64()).sum::<u64>();
                    format!("merged from unfinished shards: {}/{} units done", units("units_done"), units("units_planned"))
                }
                None => "merged from unfinished shards (no readable merged/merge.json says how far)".into(),
            });
        }
        row
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.4}"))
}

/// The markdown table (what stdout shows too).
pub fn markdown(title: &str, rows: &[Row]) -> String {
    let mut s = format!("# {title}\n\n| variation | status | RCA | FID | KID | IS | LPIPS | generated | set |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let status = match &r.detail {
            Some(d) if r.status != "complete" => format!("{} ({d})", r.status),
            _ => r.status.clone(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            status.replace('|', "\\|"),
            cell(r.rca),
            cell(r.fid),
            r.kid.map_or(String::new(), |v| format!("{v:.6}")),
            cell(r.inception_score),
            cell(r.lpips_diversity),
            r.generated_images.map_or(String::new(), |n| n.to_string()),
            r.set.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(" ").replace('|', "\\|"),
        ));
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV: one row per variation, full precision, empty where there is no number.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from("variation,status,detail,rca,fid,kid,inception_score,lpips_diversity,generated_images,set,run_dir\n");
    let full = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for r in rows {
        let fields = [
            r.name.clone(),
            r.status.clone(),
            r.detail.clone().unwrap_or_default(),
            full(r.rca),
            full(r.fid),
            full(r.kid),
            full(r.inception_score),
            full(r.lpips_diversity),
            r.generated_images.map_or(String::new(), |n| n.to_string()),
            r.set.join(" "),
            r.run_dir.display().to_string(),
        ];
        s.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        s.push('\n');
    }
    s
}

/// Every variation's row, in plan order.
pub fn rows(plan: &PlanRecord) -> Vec<Row> {
    plan.variations.iter().map(|v| Row::read(&v.name, &v.set, &v.run_dir, plan.shards)).collect()
}
