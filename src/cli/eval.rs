//! `rcaflow eval`: scores two ImageFolder trees (real and generated) with the oracle. It builds
//! a topology (written to the output folder as `topology.toml`, so the run can be repeated with
//! `rcaflow run`) and runs it through the same runtime as `rcaflow run`.

use std::path::{Path, PathBuf};

use clap::Args;
use toml::{Table, Value};

use super::{apply_overrides, execute, CliError, OracleArgs};
use crate::models::lpips::LpipsNet;
use crate::settings::Settings;
use crate::stages::Graph;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Real held-out images: root/<class>/*.png|jpg|jpeg.
    #[arg(long, value_name = "DIR")]
    pub real: PathBuf,
    /// Generated images, same class folders as --real.
    #[arg(long, value_name = "DIR")]
    pub generated: PathBuf,
    /// Output folder: report.json, report.md, figures.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub oracle: OracleArgs,
    #[command(flatten)]
    pub visual: VisualArgs,
    /// Discard the output folder's checkpoints and start over (by default an output folder
    /// holding an evaluation of the same inputs is resumed).
    #[arg(long)]
    pub fresh: bool,
}

/// The visual-quality metrics `eval` can add.
#[derive(Debug, Args)]
pub struct VisualArgs {
    /// Adds FID and Inception Score: pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth).
    /// Without a value: that file in the torch hub cache.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    pub inception: Option<PathBuf>,
    /// Adds KID (torch-fidelity conventions: 100 subsets of 1000, seed 0); needs --inception.
    #[arg(long, requires = "inception")]
    pub kid: bool,
    /// Adds k-NN precision, recall, density and coverage (k = 3); needs --inception.
    #[arg(long, requires = "inception")]
    pub precision_recall: bool,
    /// FID (and KID, precision/recall when asked for) also per class; needs --inception.
    #[arg(long, requires = "inception")]
    pub per_class: bool,
    /// Inception Score splits.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub is_splits: usize,
    /// Adds per-class LPIPS diversity with this backbone (alex or vgg).
    #[arg(long, value_name = "alex|vgg")]
    pub lpips_net: Option<LpipsNet>,
    /// torchvision alexnet/vgg16 state_dict (default: its standard name in the torch hub cache).
    #[arg(long, value_name = "FILE")]
    pub lpips_backbone: Option<PathBuf>,
    /// lpips v0.1 lin weights, alex.pth or vgg.pth (default: looked up in the torch hub cache).
    #[arg(long, value_name = "FILE")]
    pub lpips_lin: Option<PathBuf>,
    /// Pairs of same-class generated images compared per class.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub lpips_pairs: usize,
}

/// `path` made absolute, so the topology does not depend on where it is written.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| CliError::Input(format!("path \"{}\": {e}", path.display())))
}

fn table(entries: &[(&str, Value)]) -> Value {
    Value::Table(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

fn inputs(ids: &[&str]) -> Value {
    Value::Array(ids.iter().map(|s| Value::String(s.to_string())).collect())
}

/// The part of the topology `eval` and `baseline` share: one image_folder source per origin →
/// batcher → oracle → rca. Callers add their other sinks, then call [`build_graph`].
pub(crate) fn oracle_topology(sources: &[(&str, &Path)], oracle: &OracleArgs) -> Result<Table, CliError> {
    let mut source_tables = Table::new();
    for (origin, path) in sources {
        source_tables.insert(
            origin.to_string(),
            table(&[("type", "image_folder".into()), ("path", path_value(&absolute(path)?)), ("origin", (*origin).into())]),
        );
    }
    let ids: Vec<&str> = sources.iter().map(|(o, _)| *o).collect();
    let mut transforms = Table::new();
    transforms.insert(
        "batches".into(),
        table(&[("type", "batcher".into()), ("inputs", inputs(&ids)), ("batch_size", Value::Integer(oracle.batch_size as i64))]),
    );
    transforms.insert(
        "oracle".into(),
        table(&[
            ("type", "oracle_classifier".into()),
            ("inputs", inputs(&["batches"])),
            ("weights", path_value(&absolute(&oracle.oracle)?)),
            ("arch", oracle.oracle_arch.to_string().into()),
            ("stem", oracle.oracle_stem.to_string().into()),
            ("normalization", String::from(oracle.oracle_norm).into()),
        ]),
    );
    let mut sinks = Table::new();
    sinks.insert("rca".into(), table(&[("type", "rca".into()), ("inputs", inputs(&["oracle"]))]));
    let mut top = Table::new();
    top.insert("sources".into(), Value::Table(source_tables));
    top.insert("transforms".into(), Value::Table(transforms));
    top.insert("sinks".into(), Value::Table(sinks));
    Ok(top)
}

/// Inserts `id = table` into section `section` of a topology table.
fn insert(top: &mut Table, section: &str, id: &str, table: Value) {
    if let Some(Value::Table(t)) = top.get_mut(section) {
        t.insert(id.to_string(), table);
    }
}

/// Validates a built topology; returns the graph and its TOML text.
pub(crate) fn build_graph(top: &Table, label: &str) -> Result<(Graph, String), CliError> {
    let text = toml::to_string(top).map_err(|e| CliError::Output(format!("cannot write the {label} topology: {e}")))?;
    let graph = Graph::parse(&text, Path::new("."), label)?;
    Ok((graph, text))
}

/// The `eval` topology: the oracle part, the requested visual metrics, and the report.
fn eval_topology(args: &EvalArgs) -> Result<(Graph, String), CliError> {
    let mut top = oracle_topology(&[("real", &args.real), ("generated", &args.generated)], &args.oracle)?;
    let mut report_inputs = vec!["rca"];
    let v = &args.visual;
    if let Some(weights) = &v.inception {
        let mut t = vec![("type", "inception_v3".into()), ("inputs", inputs(&["batches"]))];
        // An empty value means "look in the torch hub cache".
        if !weights.as_os_str().is_empty() {
            t.push(("weights", path_value(&absolute(weights)?)));
        }
        insert(&mut top, "transforms", "inception", table(&t));
        let per_class = ("per_class", Value::Boolean(v.per_class));
        insert(&mut top, "sinks", "fid", table(&[("type", "fid".into()), ("inputs", inputs(&["inception"])), per_class.clone()]));
        if v.kid {
            insert(&mut top, "sinks", "kid", table(&[("type", "kid".into()), ("inputs", inputs(&["inception"])), per_class.clone()]));
            report_inputs.push("kid");
        }
        if v.precision_recall {
            let t = table(&[("type", "precision_recall".into()), ("inputs", inputs(&["inception"])), per_class.clone()]);
            insert(&mut top, "sinks", "precision_recall", t);
            report_inputs.push("precision_recall");
        }
        insert(
            &mut top,
            "sinks",
            "inception_score",
            table(&[
                ("type", "inception_score".into()),
                ("inputs", inputs(&["inception"])),
                ("splits", Value::Integer(v.is_splits as i64)),
            ]),
        );
        report_inputs.extend(["fid", "inception_score"]);
    }
    if v.lpips_net.is_some() || v.lpips_backbone.is_some() || v.lpips_lin.is_some() {
        let mut t = vec![
            ("type", "lpips_diversity".into()),
            ("inputs", inputs(&["batches"])),
            ("net", v.lpips_net.unwrap_or_default().to_string().into()),
            ("pairs", Value::Integer(v.lpips_pairs as i64)),
        ];
        if let Some(p) = &v.lpips_backbone {
            t.push(("backbone", path_value(&absolute(p)?)));
        }
        if let Some(p) = &v.lpips_lin {
            t.push(("lin", path_value(&absolute(p)?)));
        }
        insert(&mut top, "sinks", "lpips", table(&t));
        report_inputs.push("lpips");
    }
    insert(&mut top, "sinks", "report", table(&[("type", "report".into()), ("inputs", inputs(&report_inputs))]));
    build_graph(&top, "rcaflow eval")
}

pub fn eval(args: EvalArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.oracle.metrics_addr, &args.oracle.device)?;
    let (graph, text) = eval_topology(&args)?;

    let out = absolute(&args.out)?;
    std::fs::create_dir_all(&out).map_err(|e| CliError::Output(format!("output folder \"{}\": cannot create: {e}", out.display())))?;
    let outcome = execute::execute(&graph, &out, &settings, args.fresh)?;
    // Written once the run went ahead: a refused one (the folder holds another evaluation)
    // leaves the folder's files as they were.
    let header = "# Topology built by `rcaflow eval`; repeat the run with `rcaflow run --topology topology.toml --run-dir .`\n";
    crate::files::atomic::write(&out.join("topology.toml"), format!("{header}{text}").as_bytes(), "topology.write")
        .map_err(|e| CliError::Output(format!("output folder \"{}\": cannot write topology.toml: {e}", out.display())))?;
    execute::finish(&outcome, &out)
}
