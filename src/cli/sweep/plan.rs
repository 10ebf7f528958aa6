//! The sweep file (TOML): variations of one topology, each an ordinary (sharded) run of it with
//! some keys changed (`rcaflow run --set`, [`crate::topology::Override`]), the way a
//! trade-off curve is measured (every checkpoint, several step counts, seeds, schedulers).
//!
//! ```toml
//! topology = "koin10.toml"        # relative to this file
//! root = "../runs/koin10-sweep"   # variation NAME runs in ROOT/NAME (shards, then merged/)
//! shards = 4                      # shards per variation (default 1)
//! [grid]                          # every combination is a variation
//! "sources.sampler.steps" = [25, 50, 100]
//! [[variation]]                   # listed one by one (crossed with the grid, when both)
//! name = "ema"                    # optional: by default made from the values
//! set = { "sources.sampler.unet" = "../models/ddpm-ema" }
//! ```
//!
//! Names are stable (a pure function of the file) and readable: a listed variation's `name`,
//! then one `LABEL-VALUE` part per grid axis (`steps-50`), joined by `_`; LABEL is the key's
//! last segment (two segments where axes would share it), VALUE the value (a path: its last
//! component, unless two values of the axis would share it). Order: listed variations in file
//! order, each with the grid's combinations, axes in key order, the last varying fastest.
//! Every error is one line naming the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::stages::Graph;
use crate::topology::Override;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("sweep {file}: {message}")]
    Invalid { file: String, message: String },
}

/// One run of the topology: its name (a directory name under the root) and its overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Variation {
    pub name: String,
    pub overrides: Vec<Override>,
}

/// `[kubernetes]`: where the pods see things (the claim mounted at `mount`).
#[derive(Clone, Debug, PartialEq)]
pub struct Kubernetes {
    pub image: String,
    pub claim: String,
    pub mount: String,
    /// The topology file as the pods see it (on the claim); by default the sweep's `topology`.
    pub topology: Option<String>,
    /// The sweep's root as the pods see it; by default the sweep's `root`.
    pub root: Option<String>,
    pub device: String,
}

impl Kubernetes {
    /// The topology file and the root as the pods see them: both on the claim.
    pub fn paths(&self, sweep: &Sweep) -> Result<(String, String), String> {
        let mut out = Vec::new();
        for (key, given, local) in [("topology", &self.topology, &sweep.topology), ("root", &self.root, &sweep.root)] {
            let path = given.clone().unwrap_or_else(|| local.display().to_string());
            if !Path::new(&path).starts_with(&self.mount) {
                let why = if given.is_some() { format!("kubernetes.{key} = \"{path}\"") } else { format!("the sweep's {key} \"{path}\"") };
                return Err(format!(
                    "{why} is not on the claim (mounted at kubernetes.mount = \"{}\"); set kubernetes.{key} to the path the pods see",
                    self.mount
                ));
            }
            out.push(path);
        }
        Ok((out[0].clone(), out[1].clone()))
    }
}

/// A sweep file, checked and expanded.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub file: PathBuf,
    /// The topology every variation changes (absolute).
    pub topology: PathBuf,
    /// Variation NAME runs in `root/NAME` (absolute).
    pub root: PathBuf,
    pub shards: u32,
    pub variations: Vec<Variation>,
    /// `[slurm] sbatch = [...]`: extra flags for every sbatch call (partition, account, ...).
    pub sbatch: Vec<String>,
    pub kubernetes: Kubernetes,
}

impl Sweep {
    /// Where variation `v` runs.
    pub fn run_dir(&self, v: &Variation) -> PathBuf {
        self.root.join(&v.name)
    }

    /// Reads, expands and checks a sweep file: every variation's topology is validated (no
    /// model is loaded).
    pub fn load(file: &Path) -> Result<Sweep, SweepError> {
        let label = file.display().to_string();
        let sweep = Sweep::read(file)?;
        for v in &sweep.variations {
            let invalid =
                |message: String| SweepError::Invalid { file: label.clone(), message: format!("variation \"{}\": {message}", v.name) };
            let graph = Graph::load_with(&sweep.topology, &v.overrides).map_err(|e| invalid(e.messages().join("; ")))?;
            // Every variation runs as shards (the job files pass `run --shard-from-env`, even
            // with shards = 1), and `run` refuses stop_when with a shard: refused here, so a
            // sweep does not reach the cluster only for every job to fail.
            if let Some(decider) = crate::stages::rca::early_stop_decider(&graph) {
                return Err(invalid(format!(
                    "{}: stop_when cannot run in a sweep: every variation runs as shards, and an early stop is decided over every class of the whole run, not per shard; drop stop_when",
                    decider.qualified()
                )));
            }
        }
        Ok(sweep)
    }

    /// Reads and expands a sweep file, without reading its topology.
    pub fn read(file: &Path) -> Result<Sweep, SweepError> {
        let err = |message: String| SweepError::Invalid { file: file.display().to_string(), message };
        let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = file.parent().unwrap_or(Path::new("."));
        Sweep::parse(&text, base, file).map_err(err)
    }

    /// Parses sweep text (`base`: the file's folder) without reading the topology.
    pub fn parse(text: &str, base: &Path, file: &Path) -> Result<Sweep, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| {
                let before = text.get(..s.start).unwrap_or(text);
                format!("line {}: ", before.matches('\n').count() + 1)
            });
            format!("invalid TOML: {}{}", at.unwrap_or_default(), e.message().lines().next().unwrap_or(""))
        })?;
        let path = |table: &mut toml::Table, key: &str| -> Result<PathBuf, String> {
            match table.remove(key) {
                Some(toml::Value::String(s)) if !s.is_empty() => Ok(absolute(&base.join(s))),
                Some(other) => Err(format!("`{key}` must be a path (a string), found {}", other.type_str())),
                None => Err(format!(
                    "`{key}` is missing ({})",
                    if key == "topology" {
                        "the topology file the variations change"
                    } else {
                        "the folder the variations' run directories go in"
                    }
                )),
            }
        };
        let topology = path(&mut table, "topology")?;
        let root = path(&mut table, "root")?;
        let shards = match table.remove("shards") {
            None => 1,
            Some(toml::Value::Integer(n)) if (1..=100_000).contains(&n) => n as u32,
            Some(other) => return Err(format!("`shards` = {other}: expected the number of shards per variation, 1 to 100000")),
        };
        let grid = match table.remove("grid") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => grid_axes(t)?,
            Some(other) => return Err(format!("`grid` must be a table of KEY = [values], found {}", other.type_str())),
        };
        let listed = match table.remove("variation") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                items.into_iter().enumerate().map(|(i, item)| listed_variation(i, item)).collect::<Result<Vec<_>, _>>()?
            }
            Some(other) => return Err(format!("`variation` must be an array of tables ([[variation]]), found {}", other.type_str())),
        };
        let sbatch = match table.remove("slurm") {
            None => Vec::new(),
            Some(toml::Value::Table(mut t)) => {
                let flags = match t.remove("sbatch") {
                    None => Vec::new(),
                    Some(toml::Value::Array(a)) => a
                        .into_iter()
                        .map(|v| match v {
                            toml::Value::String(s) => Ok(s),
                            other => Err(format!("slurm.sbatch: expected sbatch flags (strings), found {}", other.type_str())),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(other) => return Err(format!("slurm.sbatch must be a list of sbatch flags, found {}", other.type_str())),
                };
                no_other_keys(&t, "slurm", &["sbatch"])?;
                flags
            }
            Some(other) => return Err(format!("`slurm` must be a table, found {}", other.type_str())),
        };
        let kubernetes = match table.remove("kubernetes") {
            None => kubernetes_table(toml::Table::new())?,
            Some(toml::Value::Table(t)) => kubernetes_table(t)?,
            Some(other) => return Err(format!("`kubernetes` must be a table, found {}", other.type_str())),
        };
        no_other_keys(&table, "the sweep file", &["topology", "root", "shards", "grid", "variation", "slurm", "kubernetes"])?;
        if grid.is_empty() && listed.is_empty() {
            return Err("no variations: give a [grid] of KEY = [values] or [[variation]] tables".into());
        }
        let variations = expand(&listed, &grid)?;
        Ok(Sweep { file: absolute(file), topology, root, shards, variations, sbatch, kubernetes })
    }
}

/// A listed variation before the grid: its given name (if any) and overrides.
struct Listed {
    name: Option<String>,
    overrides: Vec<Override>,
    values: Vec<(String, toml::Value)>,
}

/// One grid axis: the key, its values and each value's name part.
struct Axis {
    key: String,
    values: Vec<(toml::Value, String)>,
}

fn no_other_keys(table: &toml::Table, what: &str, known: &[&str]) -> Result<(), String> {
    match table.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown key `{k}` in {what} (expected one of: {})", known.join(", "))),
        None => Ok(()),
    }
}

fn override_of(at: &str, key: &str, value: toml::Value) -> Result<Override, String> {
    Override::new(key, value).map_err(|e| format!("{at}: {}", e.trim_start_matches("--set ")))
}

fn grid_axes(table: toml::Table) -> Result<Vec<Axis>, String> {
    let mut axes = Vec::new();
    for (key, values) in table {
        let at = format!("grid.\"{key}\"");
        let values = match values {
            toml::Value::Array(a) if !a.is_empty() => a,
            toml::Value::Array(_) => return Err(format!("{at}: the list of values is empty")),
            other => return Err(format!("{at}: expected a list of values, found {}", other.type_str())),
        };
        override_of(&at, &key, values[0].clone())?;
        axes.push(Axis { key, values: values.into_iter().map(|v| (v, String::new())).collect() });
    }
    // Labels: the key's last segment, two where axes would share it.
    let last = |k: &str, n: usize| k.rsplit('.').take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("-");
    let labels: Vec<String> = axes
        .iter()
        .map(|a| {
            let shared = axes.iter().filter(|b| last(&b.key, 1) == last(&a.key, 1)).count() > 1;
            last(&a.key, if shared { 2 } else { 1 })
        })
        .collect();
    for (axis, label) in axes.iter_mut().zip(labels) {
        let short: Vec<String> = axis.values.iter().map(|(v, _)| value_part(v, true)).collect();
        let unique = |parts: &[String]| parts.iter().enumerate().all(|(i, p)| !parts[..i].contains(p));
        let parts = if unique(&short) { short } else { axis.values.iter().map(|(v, _)| value_part(v, false)).collect() };
        if !unique(&parts) {
            return Err(format!("grid.\"{}\": two values give the same name part; list them as [[variation]] with names", axis.key));
        }
        for ((_, part), p) in axis.values.iter_mut().zip(parts) {
            *part = format!("{label}-{p}");
        }
    }
    Ok(axes)
}

fn listed_variation(i: usize, item: toml::Value) -> Result<Listed, String> {
    let at = format!("variation[{i}]");
    let toml::Value::Table(mut t) = item else {
        return Err(format!("{at}: expected a table with `set` (and `name`), found {}", item.type_str()));
    };
    let name = match t.remove("name") {
        None => None,
        Some(toml::Value::String(s)) => Some(check_name(&format!("{at}.name"), &s)?),
        Some(other) => return Err(format!("{at}.name: expected a string, found {}", other.type_str())),
    };
    let set = match t.remove("set") {
        Some(toml::Value::Table(s)) if !s.is_empty() => s,
        Some(toml::Value::Table(_)) | None => {
            return Err(format!("{at}: `set` is missing or empty (the topology keys this variation changes, {{ \"KEY\" = VALUE }})"))
        }
        Some(other) => return Err(format!("{at}.set: expected a table of \"KEY\" = VALUE, found {}", other.type_str())),
    };
    no_other_keys(&t, &at, &["name", "set"])?;
    let mut overrides = Vec::new();
    let mut values = Vec::new();
    for (key, value) in set {
        overrides.push(override_of(&format!("{at}.set.\"{key}\""), &key, value.clone())?);
        values.push((key, value));
    }
    Ok(Listed { name, overrides, values })
}

/// A variation name must be a directory name anywhere (and readable in a table).
fn check_name(at: &str, name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 120
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "{at} = \"{name}\": expected 1 to 120 letters, digits, -, _ or . (not starting with .): it is a directory name"
        ));
    }
    Ok(name.to_string())
}

/// A value as a name part: numbers and booleans as written, strings (with `short`, a path's
/// last component) with anything but letters, digits, `.`, `-` and `_` made `-`.
fn value_part(v: &toml::Value, short: bool) -> String {
    let text = match v {
        toml::Value::String(s) if short => {
            let s = s.trim_end_matches('/');
            let last = s.rsplit('/').next().unwrap_or(s);
            // A weights file: its stem (`ckpt-10k.safetensors` -> `ckpt-10k`).
            match last.rsplit_once('.') {
                Some((stem, ext)) if !stem.is_empty() && ext.chars().all(|c| c.is_ascii_alphabetic()) && ext.len() <= 12 => {
                    stem.to_string()
                }
                _ => last.to_string(),
            }
        }
        toml::Value::String(s) => s.trim_matches('/').to_string(),
        toml::Value::Array(items) => items.iter().map(|i| value_part(i, short)).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    };
    let cleaned: String = text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '-' }).collect();
    let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.').to_string();
    if cleaned.is_empty() {
        "x".into()
    } else {
        cleaned
    }
}

/// Listed variations (or one empty one) times the grid's combinations, named.
fn expand(listed: &[Listed], grid: &[Axis]) -> Result<Vec<Variation>, String> {
    let none = [Listed { name: None, overrides: Vec::new(), values: Vec::new() }];
    let listed = if listed.is_empty() { &none[..] } else { listed };
    let combinations: usize = grid.iter().map(|a| a.values.len()).product();
    if listed.len().saturating_mul(combinations) > 10_000 {
        return Err(format!("{} variations: a sweep holds 10000 at most", listed.len().saturating_mul(combinations)));
    }
    let mut out = Vec::new();
    let mut first_of: BTreeMap<String, usize> = BTreeMap::new();
    for l in listed {
        // A listed variation without a name is named by its values (key labels as the grid's).
        let base = match &l.name {
            Some(n) => Some(n.clone()),
            None if l.values.is_empty() => None,
            None => Some(
                l.values
                    .iter()
                    .map(|(k, v)| format!("{}-{}", k.rsplit('.').next().unwrap_or(k), value_part(v, true)))
                    .collect::<Vec<_>>()
                    .join("_"),
            ),
        };
        for c in 0..combinations {
            let mut parts: Vec<String> = base.iter().cloned().collect();
            let mut overrides = l.overrides.clone();
            let mut rest = c;
            let mut picks = vec![0; grid.len()];
            for (i, axis) in grid.iter().enumerate().rev() {
                picks[i] = rest % axis.values.len();
                rest /= axis.values.len();
            }
            for (axis, &k) in grid.iter().zip(&picks) {
                let (value, part) = &axis.values[k];
                // A key set twice would make the name lie about one of the values.
                if l.overrides.iter().any(|o| o.key() == axis.key) {
                    return Err(format!(
                        "grid.\"{}\" is also set by variation \"{}\"; a key is either a grid axis or a listed variation's",
                        axis.key,
                        base.as_deref().unwrap_or("")
                    ));
                }
                overrides.push(override_of(&format!("grid.\"{}\"", axis.key), &axis.key, value.clone())?);
                parts.push(part.clone());
            }
            let name = check_name("variation name", &parts.join("_"))?;
            if let Some(first) = first_of.insert(name.clone(), out.len()) {
                return Err(format!(
                    "variations {} and {} are both named \"{name}\"; give the [[variation]] tables distinct names",
                    first + 1,
                    out.len() + 1
                ));
            }
            out.push(Variation { name, overrides });
        }
    }
    Ok(out)
}

fn kubernetes_table(mut t: toml::Table) -> Result<Kubernetes, String> {
    let mut text = |key: &str| -> Result<Option<String>, String> {
        match t.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(other) => Err(format!("kubernetes.{key}: expected a non-empty string, found {}", other.type_str())),
        }
    };
    // The shipped deploy/kubernetes files' values, unless the sweep says otherwise.
    let k = Kubernetes {
        image: text("image")?.unwrap_or_else(|| "rcaflow:latest".into()),
        claim: text("claim")?.unwrap_or_else(|| "rcaflow-runs".into()),
        mount: text("mount")?.unwrap_or_else(|| "/runs".into()),
        topology: text("topology")?,
        root: text("root")?,
        device: text("device")?.unwrap_or_else(|| "cuda:0".into()),
    };
    no_other_keys(&t, "[kubernetes]", &["image", "claim", "mount", "topology", "root", "device"])?;
    Ok(k)
}

/// `path` made absolute against the working directory, `a/../` folded away.
fn absolute(path: &Path) -> PathBuf {
    let joined = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Sweep, String> {
        Sweep::parse(text, Path::new("/sweeps"), Path::new("/sweeps/s.toml"))
    }

    fn names(s: &Sweep) -> Vec<&str> {
        s.variations.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn a_grid_times_the_listed_variations_expands_in_a_stable_order_with_readable_names() {
        let s = parse(
            r#"
            topology = "../topology/koin10.toml"
            root = "runs"
            shards = 3
            [grid]
            "sources.sampler.steps" = [25, 50]
            "sources.sampler.seed" = [0, 1]
            [[variation]]
            name = "ema"
            set = { "sources.sampler.unet" = "../models/ddpm-ema" }
            [[variation]]
            set = { "sources.sampler.unet" = "../models/ckpt-10k.safetensors", "sources.sampler.scheduler" = "ddim" }
            "#,
        )
        .unwrap();
        assert_eq!((s.topology.as_path(), s.root.as_path(), s.shards), (Path::new("/topology/koin10.toml"), Path::new("/sweeps/runs"), 3));
        assert_eq!(
            names(&s),
            [
                "ema_seed-0_steps-25",
                "ema_seed-0_steps-50",
                "ema_seed-1_steps-25",
                "ema_seed-1_steps-50",
                "scheduler-ddim_unet-ckpt-10k_seed-0_steps-25",
                "scheduler-ddim_unet-ckpt-10k_seed-0_steps-50",
                "scheduler-ddim_unet-ckpt-10k_seed-1_steps-25",
                "scheduler-ddim_unet-ckpt-10k_seed-1_steps-50",
            ]
        );
        let sets: Vec<String> = s.variations[5].overrides.iter().map(ToString::to_string).collect();
        assert_eq!(
            sets,
            [
                "sources.sampler.scheduler=\"ddim\"",
                "sources.sampler.unet=\"../models/ckpt-10k.safetensors\"",
                "sources.sampler.seed=0",
                "sources.sampler.steps=50"
            ]
        );
        assert_eq!(s.run_dir(&s.variations[0]), Path::new("/sweeps/runs/ema_seed-0_steps-25"));
        // The same file gives the same plan.
        let again = parse(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/sweep-steps.toml")).unwrap());
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn labels_take_two_segments_where_axes_share_one_and_paths_their_full_form_where_they_collide() {
        let s = parse(
            r#"
            topology = "t.toml"
            root = "r"
            [grid]
            "sources.a.steps" = [10]
            "sources.b.steps" = [20]
            "sources.a.unet" = ["m/run1/ema", "m/run2/ema/"]
            "#,
        )
        .unwrap();
        assert_eq!(names(&s), ["a-steps-10_unet-m-run1-ema_b-steps-20", "a-steps-10_unet-m-run2-ema_b-steps-20"]);
        let s = parse("topology = \"t.toml\"\nroot = \"r\"\n[grid]\n\"sinks.kid.subsets\" = [10, 100]\n\"run.default_capacity\" = [2]\n")
            .unwrap();
        assert_eq!(names(&s), ["default_capacity-2_subsets-10", "default_capacity-2_subsets-100"]);
    }

    #[test]
    fn bad_sweep_files_are_refused_in_one_line_naming_the_key() {
        let head = "topology = \"t.toml\"\nroot = \"r\"\n";
        let cases = [
            ("root = \"r\"\n[grid]\n\"run.dir\" = [\"a\"]\n".to_string(), "`topology` is missing"),
            (format!("{head}shards = 0\n[grid]\n\"run.dir\" = [\"a\"]\n"), "`shards` = 0: expected the number of shards per variation"),
            (format!("{head}shard = 2\n[grid]\n\"run.dir\" = [\"a\"]\n"), "unknown key `shard` in the sweep file"),
            (head.to_string(), "no variations: give a [grid]"),
            (format!("{head}[grid]\n\"sources.sampler.steps\" = 5\n"), "grid.\"sources.sampler.steps\": expected a list of values, found integer"),
            (format!("{head}[grid]\n\"sources.sampler.steps\" = []\n"), "grid.\"sources.sampler.steps\": the list of values is empty"),
            (format!("{head}[grid]\n\"steps\" = [1]\n"), "grid.\"steps\": \"steps\": expected a dotted key"),
            (format!("{head}[[variation]]\nname = \"a b\"\nset = {{ \"run.dir\" = \"x\" }}\n"), "variation[0].name = \"a b\": expected 1 to 120 letters"),
            (format!("{head}[[variation]]\nname = \"a\"\n"), "variation[0]: `set` is missing or empty"),
            (format!("{head}[[variation]]\nset = {{ \"run.dir\" = \"x\" }}\nsteps = 3\n"), "unknown key `steps` in variation[0]"),
            (
                format!("{head}[[variation]]\nname = \"a\"\nset = {{ \"run.dir\" = \"x\" }}\n[[variation]]\nname = \"a\"\nset = {{ \"run.dir\" = \"y\" }}\n"),
                "variations 1 and 2 are both named \"a\"",
            ),
            (
                format!("{head}[grid]\n\"run.dir\" = [\"x\"]\n[[variation]]\nname = \"a\"\nset = {{ \"run.dir\" = \"y\" }}\n"),
                "grid.\"run.dir\" is also set by variation \"a\"",
            ),
            (format!("{head}[grid]\n\"run.dir\" = [\"x\"]\n[kubernetes]\nimage = 3\n"), "kubernetes.image: expected a non-empty string, found integer"),
            (format!("{head}[grid]\n\"run.dir\" = [\"x\"]\n[slurm]\nsbatch = \"-p gpu\"\n"), "slurm.sbatch must be a list of sbatch flags"),
            (format!("{head}[grid\n"), "invalid TOML: line 3"),
        ];
        for (text, expected) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(expected) && !e.contains('\n'), "{text}\n=> {e}\nexpected: {expected}");
        }
    }

    /// Every variation's topology is checked (no model loaded), the error naming the variation.
    #[test]
    fn load_checks_each_variations_topology_and_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/demo-rca.toml");
        let write = |grid: &str| {
            let file = tmp.path().join("s.toml");
            std::fs::write(&file, format!("topology = \"{}\"\nroot = \"runs\"\n[grid]\n{grid}\n", demo.display())).unwrap();
            Sweep::load(&file).map(|s| s.variations.len()).map_err(|e| e.to_string())
        };
        assert_eq!(write("\"sources.sampler.steps\" = [10, 25]"), Ok(2));
        let e = write("\"sources.sampler.steps\" = [10, \"many\"]").unwrap_err();
        assert!(e.contains("variation \"steps-many\"") && e.contains("sources.sampler") && !e.contains('\n'), "{e}");
        let e = write("\"sources.samplr.steps\" = [10]").unwrap_err();
        assert!(e.contains("variation \"steps-10\"") && e.contains("the topology has no [sources.samplr] (it has real, sampler)"), "{e}");
        // A valid topology with an early stop: every variation runs as shards, which `run` refuses.
        let e = write("\"sinks.rca.stop_when.ci_half_width\" = [0.1]\n\"sinks.rca.stop_when.min_per_class\" = [5]").unwrap_err();
        assert!(e.contains("sinks.rca: stop_when cannot run in a sweep") && !e.contains('\n'), "{e}");
    }
}
