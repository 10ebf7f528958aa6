//! `--set KEY=VALUE`: one key of a topology file changed without editing the file (`rcaflow run`,
//! `validate`, and each variation of a sweep). KEY is the key's dotted path as the file would
//! write it (`sources.sampler.steps`, `run.dir`); VALUE is a TOML value (`50`, `"ddim"`,
//! `[1, 2]`), or else taken as a bare string (`--set sources.sampler.unet=models/ckpt-10k`).
//! The override is applied to the parsed file before validation, so a value means what it
//! would mean written in the file (a relative path is relative to the topology's folder) and a
//! bad one gets the message the file would get. The run manifest records the overrides, so a
//! resumed or merged run is checked against the same variation.

use std::fmt;
use std::str::FromStr;

/// One `KEY=VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// The dotted path, split: `["sources", "sampler", "steps"]`.
    pub path: Vec<String>,
    pub value: toml::Value,
}

impl Override {
    /// The dotted key, as written.
    pub fn key(&self) -> String {
        self.path.join(".")
    }

    /// A key path (checked as [`Override::from_str`] checks it) and its value.
    pub fn new(key: &str, value: toml::Value) -> Result<Override, String> {
        Ok(Override { path: key_path(key)?, value })
    }

    /// Sets the key in `table` (a parsed topology file). The component (`[sources.ID]`, ...,
    /// or `[run]`) must exist; tables below it are created where missing.
    pub fn apply(&self, table: &mut toml::Table) -> Result<(), String> {
        let key = self.key();
        let head = match self.path[0].as_str() {
            "run" => 1,
            "sources" | "transforms" | "sinks" => 2,
            other => {
                return Err(format!("--set {key}: a topology has no [{other}] (keys start with run., sources., transforms. or sinks.)"))
            }
        };
        if self.path.len() <= head {
            return Err(format!("--set {key}: names a table, not a key inside it (e.g. {key}.FIELD)"));
        }
        let mut at = table;
        for (depth, name) in self.path[..self.path.len() - 1].iter().enumerate() {
            let here = self.path[..=depth].join(".");
            if !at.contains_key(name) {
                if depth < head && !(depth == 0 && head == 1) {
                    let known: Vec<&String> = at.keys().collect();
                    let known =
                        if known.is_empty() { "none".to_string() } else { known.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ") };
                    return Err(format!("--set {key}: the topology has no [{here}] (it has {known})"));
                }
                at.insert(name.clone(), toml::Value::Table(toml::Table::new()));
            }
            at = match at.get_mut(name) {
                Some(toml::Value::Table(t)) => t,
                Some(other) => return Err(format!("--set {key}: {here} is {}, not a table", other.type_str())),
                None => return Err(format!("--set {key}: the topology has no [{here}]")),
            };
        }
        at.insert(self.path[self.path.len() - 1].clone(), self.value.clone());
        Ok(())
    }
}

fn key_path(key: &str) -> Result<Vec<String>, String> {
    let path: Vec<String> = key.split('.').map(str::to_string).collect();
    let ok = |s: &String| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if path.len() < 2 || !path.iter().all(ok) {
        return Err(format!(
            "--set \"{key}\": expected a dotted key such as sources.sampler.steps (letters, digits, _ and - between dots)"
        ));
    }
    Ok(path)
}

/// Parses VALUE as a TOML value; text that is not one is a bare string.
pub fn parse_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| toml::Value::String(text.to_string())),
        _ => toml::Value::String(text.to_string()),
    }
}

impl FromStr for Override {
    type Err = String;
    fn from_str(text: &str) -> Result<Override, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!("--set \"{text}\": expected KEY=VALUE, e.g. sources.sampler.steps=50"));
        };
        Override::new(key.trim(), parse_value(value.trim()))
    }
}

/// `KEY=VALUE` with VALUE in TOML syntax: what the manifest records and [`Override::from_str`]
/// reads back.
impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> toml::Table {
        toml::from_str("[run]\ndir = \"r\"\n[sources.sampler]\ntype = \"ddpm_sampler\"\nsteps = 10\n[sinks.rca]\ntype = \"rca\"\n").unwrap()
    }

    #[test]
    fn values_are_toml_or_bare_strings_and_round_trip_through_display() {
        for (text, value) in [
            ("sources.sampler.steps=50", toml::Value::Integer(50)),
            ("sources.sampler.scheduler=\"ddim\"", toml::Value::String("ddim".into())),
            ("sources.sampler.unet=models/ckpt-10k", toml::Value::String("models/ckpt-10k".into())),
            ("run.dir = runs/a", toml::Value::String("runs/a".into())),
            ("sinks.rca.x=1.5", toml::Value::Float(1.5)),
        ] {
            let o: Override = text.parse().unwrap();
            assert_eq!(o.value, value, "{text}");
            assert_eq!(o.to_string().parse::<Override>().unwrap(), o, "{text}");
        }
        // A newline cannot smuggle in a second key.
        assert_eq!(parse_value("1\nother = 2"), toml::Value::String("1\nother = 2".into()));
    }

    #[test]
    fn apply_sets_existing_and_new_keys_and_refuses_unknown_components_in_one_line() {
        let mut t = topology();
        "sources.sampler.steps=50".parse::<Override>().unwrap().apply(&mut t).unwrap();
        "sinks.rca.restart.max=2".parse::<Override>().unwrap().apply(&mut t).unwrap();
        "run.classes=[\"a\", \"b\"]".parse::<Override>().unwrap().apply(&mut t).unwrap();
        assert_eq!(t["sources"]["sampler"]["steps"].as_integer(), Some(50));
        assert_eq!(t["sinks"]["rca"]["restart"]["max"].as_integer(), Some(2));
        assert_eq!(t["run"]["classes"].as_array().map(Vec::len), Some(2));
        let refusals = [
            ("sources.samplr.steps=5", "--set sources.samplr.steps: the topology has no [sources.samplr] (it has sampler)"),
            ("transforms.oracle.weights=x", "the topology has no [transforms] (it has run, sinks, sources)"),
            ("source.sampler.steps=5", "a topology has no [source]"),
            ("sources.sampler=5", "names a table, not a key inside it"),
            ("sources.sampler.steps.x=5", "sources.sampler.steps is integer, not a table"),
        ];
        for (text, expected) in refusals {
            let e = text.parse::<Override>().unwrap().apply(&mut topology()).unwrap_err();
            assert!(e.contains(expected) && !e.contains('\n'), "{text}: {e}");
        }
        for bad in ["steps", "sources..steps=1", "=1", "sources.sampler steps=1"] {
            let e = bad.parse::<Override>().unwrap_err();
            assert!(e.starts_with("--set ") && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
