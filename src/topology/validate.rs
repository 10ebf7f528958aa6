//! Topology validation: from the raw TOML to a checked [`Graph`]. Every problem is collected
//! before failing (as Vector does), and each message names its component and says what was
//! expected and what was found. Nothing here loads a model: weights are checked for existence
//! and, for safetensors, by reading the file header alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::config::{parse_component, Component, ComponentKind, DdpmSamplerConfig, RawTopology, Section, DEFAULT_CAPACITY};
use super::{Edge, Graph};
use crate::models::hub_cache;
use crate::models::inception::PT_INCEPTION_FILE;
use crate::models::unet::{UNet2DConfig, CONFIG_FILE as UNET_CONFIG_FILE, WEIGHTS_FILE as UNET_WEIGHTS_FILE};
use crate::runtime::batch::Origin;
use crate::stages::image_folder;

/// Validates a parsed file. `Err` holds every message, one line each.
pub(crate) fn validate(raw: RawTopology, base: &Path) -> Result<Graph, Vec<String>> {
    let mut errors = Vec::new();
    let default_capacity = match raw.run.default_capacity {
        Some(0) => {
            errors.push("run: default_capacity must be at least 1 batch, found 0".to_string());
            DEFAULT_CAPACITY
        }
        Some(n) => n,
        None => DEFAULT_CAPACITY,
    };

    // 1. Ids are unique across sections, since inputs name them without a section.
    let mut seen: BTreeMap<String, Section> = BTreeMap::new();
    let mut components = Vec::new();
    // What components that were rejected (already reported) read: still read, so their inputs
    // are not reported again as having no consumer.
    let mut read_by_rejected: BTreeSet<String> = BTreeSet::new();
    for (section, tables) in [(Section::Sources, raw.sources), (Section::Transforms, raw.transforms), (Section::Sinks, raw.sinks)] {
        for (id, table) in tables {
            let declared_inputs = table.get("inputs").and_then(|v| v.as_array()).into_iter().flatten();
            let declared_inputs: Vec<String> = declared_inputs.filter_map(|v| v.as_str().map(str::to_string)).collect();
            if let Some(first) = seen.get(&id) {
                errors.push(format!(
                    "{}.{id}: id \"{id}\" is already used by {}.{id}; ids must be unique across sections",
                    section.as_str(),
                    first.as_str()
                ));
                read_by_rejected.extend(declared_inputs);
                continue;
            }
            seen.insert(id.clone(), section);
            match parse_component(section, &id, table, default_capacity, &mut errors) {
                Some(mut c) => {
                    c.kind.resolve_paths(base);
                    components.push(c);
                }
                None => read_by_rejected.extend(declared_inputs),
            }
        }
    }
    if seen.is_empty() {
        errors.push("topology declares no components; expected [sources.ID], [transforms.ID] and [sinks.ID] tables".into());
    }

    // 2. Each type in its section; sources take no inputs, the others need some.
    for c in &components {
        let name = c.qualified();
        let home = c.kind.section();
        if home != c.section {
            errors.push(format!(
                "{name}: type \"{}\" belongs in [{}.{}], found in [{}]",
                c.kind.type_name(),
                home.as_str(),
                c.id,
                c.section.as_str()
            ));
        }
        match (c.kind.accepts(), c.inputs.is_empty()) {
            (None, false) => errors.push(format!("{name}: a source takes no inputs, found inputs = [{}]", quoted(&c.inputs))),
            (Some(kind), true) => {
                errors.push(format!("{name}: `inputs` is missing or empty; expected the ids of components producing {kind}"))
            }
            _ => {}
        }
    }

    // 3. Inputs exist and produce what their consumer accepts.
    let by_id: BTreeMap<&str, &Component> = components.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut edges = Vec::new();
    for c in &components {
        let Some(accepts) = c.kind.accepts() else { continue };
        let mut distinct = BTreeSet::new();
        for input in &c.inputs {
            if !distinct.insert(input) {
                errors.push(format!("{}: input \"{input}\" is listed twice", c.qualified()));
                continue;
            }
            let Some(producer) = by_id.get(input.as_str()) else {
                if seen.contains_key(input) {
                    continue; // declared but invalid: already reported on its own.
                }
                errors.push(format!(
                    "{}: input \"{input}\" does not exist; known components: {}",
                    c.qualified(),
                    seen.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
                continue;
            };
            match producer.kind.produces() {
                Some(kind) if kind == accepts => edges.push(Edge { from: input.clone(), to: c.id.clone(), capacity: c.capacity }),
                Some(kind) => errors.push(format!(
                    "{}: input \"{input}\" ({}) produces {kind}, expected {accepts}",
                    c.qualified(),
                    producer.kind.type_name()
                )),
                None => errors.push(format!(
                    "{}: input \"{input}\" ({}) produces nothing, expected {accepts}",
                    c.qualified(),
                    producer.kind.type_name()
                )),
            }
        }
    }

    // 4. Nothing produced is left unread.
    for c in &components {
        if c.kind.needs_consumer() && !edges.iter().any(|e| e.from == c.id) && !read_by_rejected.contains(&c.id) {
            errors.push(format!(
                "{}: its output ({}) is not consumed by any component; expected it in some `inputs`",
                c.qualified(),
                c.kind.produces().map(|k| k.to_string()).unwrap_or_default()
            ));
        }
    }

    // 5. A dataflow graph has no cycles.
    let order = match topological_order(&components, &edges) {
        Ok(order) => order,
        Err(cycle) => {
            let first = by_id[cycle[0].as_str()];
            errors.push(format!("{}: part of a cycle {}; a topology must be acyclic", first.qualified(), cycle.join(" -> ")));
            components.iter().map(|c| c.id.clone()).collect()
        }
    };

    // 6. Files and folders exist; class lists agree.
    let classes = check_inputs_on_disk(&components, &raw.run.classes, &mut errors);

    // 7. Origins: one source each; every rca sink has evidence of real accuracy.
    let mut origin_owner: BTreeMap<Origin, &str> = BTreeMap::new();
    for c in &components {
        if let Some(origin) = c.kind.source_origin() {
            if let Some(other) = origin_owner.insert(origin, &c.id) {
                errors.push(format!(
                    "{}: origin \"{origin}\" is already produced by sources.{other}; expected one source per origin",
                    c.qualified()
                ));
            }
        }
    }
    for c in &components {
        // Sinks comparing with real data need real images upstream or a file standing for them.
        let (substitute, key) = match &c.kind {
            ComponentKind::Rca(cfg) => (cfg.baseline.is_some(), "baseline"),
            ComponentKind::Fid(cfg) => (cfg.reference.is_some(), "reference"),
            _ => continue,
        };
        let Some(origins) = upstream_origins(&c.id, &by_id, &edges) else {
            continue; // a rejected or unknown input upstream: already reported.
        };
        match (origins.contains(&Origin::Real), substitute) {
            (false, false) => errors.push(format!(
                "{}: no real images reach it and no `{key}` is set; expected an image_folder source with origin = \"real\" upstream, or {key} = FILE",
                c.qualified()
            )),
            (true, true) => errors.push(format!(
                "{}: both real images upstream and a `{key}` file; expected one of the two",
                c.qualified()
            )),
            _ => {}
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut by_id: BTreeMap<String, Component> = components.into_iter().map(|c| (c.id.clone(), c)).collect();
    let components = order.iter().filter_map(|id| by_id.remove(id)).collect();
    Ok(Graph {
        label: String::new(),
        run_dir: raw.run.dir.map(|d| super::config::resolve(base, &d)),
        components,
        edges,
        classes: classes.unwrap_or_default(),
    })
}

/// Kahn's algorithm; on a cycle, returns one cycle as a path of ids (first id repeated last).
fn topological_order(components: &[Component], edges: &[Edge]) -> Result<Vec<String>, Vec<String>> {
    let mut indegree: BTreeMap<&str, usize> = components.iter().map(|c| (c.id.as_str(), 0)).collect();
    for e in edges {
        *indegree.entry(&e.to).or_default() += 1;
    }
    let mut ready: Vec<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(id, _)| *id).collect();
    let mut order = Vec::new();
    while let Some(id) = ready.pop() {
        order.push(id.to_string());
        for e in edges.iter().filter(|e| e.from == id) {
            let d = indegree.get_mut(e.to.as_str()).expect("edge target is a component");
            *d -= 1;
            if *d == 0 {
                ready.push(&e.to);
            }
        }
    }
    if order.len() == indegree.len() {
        return Ok(order);
    }
    // Walk backwards along inputs from a node left over until a node repeats: that is a cycle.
    let left: BTreeSet<&str> = indegree.iter().filter(|(_, d)| **d > 0).map(|(id, _)| *id).collect();
    let start = *left.iter().next().expect("some node is left when a cycle exists");
    let mut path = vec![start];
    loop {
        let here = *path.last().expect("path is never empty");
        let prev = edges
            .iter()
            .find(|e| e.to == here && left.contains(e.from.as_str()))
            .map(|e| e.from.as_str())
            .expect("a node in a cycle has an input in the cycle");
        if let Some(pos) = path.iter().position(|p| *p == prev) {
            // path[k + 1] feeds path[k], so the reversed tail is the cycle in data-flow order.
            let mut ring: Vec<String> = path[pos..].iter().rev().map(|s| s.to_string()).collect();
            // Start at the alphabetically first member, so the message is stable.
            let first = ring.iter().enumerate().min_by_key(|(_, s)| s.as_str()).map_or(0, |(i, _)| i);
            ring.rotate_left(first);
            ring.push(ring[0].clone());
            return Err(ring);
        }
        path.push(prev);
    }
}

/// Origins of the image sources from which data reaches `id`; `None` when some component
/// upstream names an input that was rejected or does not exist, so the answer is unknown.
fn upstream_origins(id: &str, by_id: &BTreeMap<&str, &Component>, edges: &[Edge]) -> Option<BTreeSet<Origin>> {
    let mut origins = BTreeSet::new();
    let mut stack = vec![id.to_string()];
    let mut visited = BTreeSet::new();
    while let Some(node) = stack.pop() {
        if !visited.insert(node.clone()) {
            continue;
        }
        let component = by_id.get(node.as_str())?;
        if component.inputs.iter().any(|input| !by_id.contains_key(input.as_str())) {
            return None;
        }
        origins.extend(component.kind.source_origin());
        stack.extend(edges.iter().filter(|e| e.to == node).map(|e| e.from.clone()));
    }
    Some(origins)
}

/// Checks the files components name, and that all class lists agree. Returns the class list.
fn check_inputs_on_disk(components: &[Component], declared: &Option<Vec<String>>, errors: &mut Vec<String>) -> Option<Vec<String>> {
    // The reference class list: `[run] classes`, else the first image folder (by id).
    let mut reference: Option<(String, Vec<String>)> = declared.clone().map(|classes| ("run.classes".to_string(), classes));
    // Real images are the ground truth: other folders are compared with them, not the reverse.
    let mut ordered: Vec<&Component> = components.iter().collect();
    ordered.sort_by_key(|c| !matches!(&c.kind, ComponentKind::ImageFolder(f) if f.origin == Origin::Real));
    for c in ordered {
        let name = c.qualified();
        match &c.kind {
            ComponentKind::ImageFolder(cfg) => {
                if cfg.unit_size == 0 {
                    errors.push(format!("{name}: unit_size must be at least 1 image, found 0"));
                }
                if !cfg.path.is_dir() {
                    errors.push(format!("{name}: image folder \"{}\" does not exist or is not a directory", cfg.path.display()));
                    continue;
                }
                match image_folder::list_classes(&cfg.path) {
                    Err(e) => errors.push(format!("{name}: {e}")),
                    Ok(classes) if classes.is_empty() => errors.push(format!(
                        "{name}: image folder \"{}\" has no class sub-folders; expected root/<class>/*.png|jpg|jpeg",
                        cfg.path.display()
                    )),
                    Ok(classes) => match &reference {
                        None => reference = Some((name.clone(), classes)),
                        Some((ref_name, ref_classes)) => {
                            if let Some(diff) = class_difference(ref_classes, &classes) {
                                errors
                                    .push(format!("{name}: class folders of \"{}\" disagree with {ref_name}: {diff}", cfg.path.display()));
                            }
                        }
                    },
                }
            }
            ComponentKind::Batcher(cfg) => {
                if cfg.batch_size == 0 {
                    errors.push(format!("{name}: batch_size must be at least 1 image, found 0"));
                }
            }
            ComponentKind::OracleClassifier(cfg) => {
                if !cfg.weights.is_file() {
                    errors.push(format!("{name}: weights file \"{}\" does not exist", cfg.weights.display()));
                }
            }
            ComponentKind::Rca(cfg) => {
                if let Some(path) = &cfg.baseline {
                    if !path.is_file() {
                        errors.push(format!("{name}: baseline file \"{}\" does not exist", path.display()));
                    }
                }
            }
            ComponentKind::InceptionV3(cfg) => match &cfg.weights {
                Some(path) if !path.is_file() => errors.push(format!("{name}: weights file \"{}\" does not exist", path.display())),
                Some(_) => {}
                None => {
                    if let Err(e) = hub_cache::locate(None, PT_INCEPTION_FILE, "inception weights", "`weights = FILE`") {
                        errors.push(format!("{name}: {e}"));
                    }
                }
            },
            ComponentKind::LpipsDiversity(cfg) => {
                if cfg.pairs == 0 {
                    errors.push(format!("{name}: pairs must be at least 1 per class, found 0"));
                }
                for (key, path, file, what) in [
                    ("backbone", &cfg.backbone, cfg.net.backbone_file(), "lpips backbone weights"),
                    ("lin", &cfg.lin, cfg.net.lin_file(), "lpips lin weights"),
                ] {
                    match path {
                        Some(p) if !p.is_file() => errors.push(format!("{name}: {key} file \"{}\" does not exist", p.display())),
                        Some(_) => {}
                        None => {
                            if let Err(e) = hub_cache::locate(None, file, what, &format!("`{key} = FILE`")) {
                                errors.push(format!("{name}: {e}"));
                            }
                        }
                    }
                }
            }
            ComponentKind::Fid(cfg) => {
                if let Some(path) = cfg.reference.as_ref().filter(|p| !p.is_file()) {
                    errors.push(format!("{name}: reference statistics file \"{}\" does not exist", path.display()));
                }
                if !(cfg.interval_secs.is_finite() && cfg.interval_secs > 0.0) {
                    errors.push(format!("{name}: interval_secs must be a positive number of seconds, found {}", cfg.interval_secs));
                }
            }
            ComponentKind::InceptionScore(cfg) => {
                if cfg.splits == 0 {
                    errors.push(format!("{name}: splits must be at least 1, found 0"));
                }
            }
            ComponentKind::DdpmSampler(cfg) => check_sampler(&name, cfg, errors),
            ComponentKind::SaveImages(_) | ComponentKind::Report(_) => {}
        }
    }
    let classes = reference.map(|(_, classes)| classes);
    if classes.is_none() {
        for c in components.iter().filter(|c| matches!(c.kind, ComponentKind::DdpmSampler(_))) {
            errors.push(format!(
                "{}: the class names are unknown; expected `classes = [...]` in [run] (in the order of the model's class labels) or an image_folder source",
                c.qualified()
            ));
        }
    }
    // Second pass: things that need the class list.
    if let Some(classes) = &classes {
        for c in components {
            let name = c.qualified();
            match &c.kind {
                ComponentKind::OracleClassifier(cfg) if cfg.weights.is_file() => {
                    if let Some(found) = safetensors_fc_classes(&cfg.weights) {
                        if found != classes.len() {
                            errors.push(format!(
                                "{name}: weights \"{}\" classify {found} classes (fc.weight), the topology has {} classes",
                                cfg.weights.display(),
                                classes.len()
                            ));
                        }
                    }
                }
                ComponentKind::DdpmSampler(cfg) => {
                    if let Ok(Some(found)) = sampler_class_count(&cfg.unet) {
                        if found != classes.len() {
                            errors.push(format!(
                                "{name}: unet \"{}\" has num_class_embeds = {found}, the topology has {} classes",
                                cfg.unet.display(),
                                classes.len()
                            ));
                        }
                    }
                }
                ComponentKind::Rca(cfg) => {
                    if let Some(path) = cfg.baseline.as_ref().filter(|p| p.is_file()) {
                        match crate::stages::rca::Baseline::read(path) {
                            Err(e) => errors.push(format!("{name}: {e}")),
                            Ok(b) => {
                                if let Some(diff) = class_difference(classes, &b.classes) {
                                    errors.push(format!(
                                        "{name}: baseline \"{}\" classes disagree with the topology's: {diff}",
                                        path.display()
                                    ));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    classes
}

/// A sampler's numbers and model folder.
fn check_sampler(name: &str, cfg: &DdpmSamplerConfig, errors: &mut Vec<String>) {
    for (key, value, unit) in
        [("per_class", cfg.per_class, "image"), ("unit_size", cfg.unit_size as u64, "image"), ("replicas", cfg.replicas as u64, "replica")]
    {
        if value == 0 {
            errors.push(format!("{name}: {key} must be at least 1 {unit}, found 0"));
        }
    }
    if cfg.steps == Some(0) {
        errors.push(format!("{name}: steps must be at least 1, found 0"));
    }
    if !(cfg.eta.is_finite() && cfg.eta >= 0.0) {
        errors.push(format!("{name}: eta must be a finite number >= 0, found {}", cfg.eta));
    }
    if !cfg.unet.is_dir() {
        errors.push(format!("{name}: unet folder \"{}\" does not exist; expected a diffusers model folder", cfg.unet.display()));
        return;
    }
    for file in [UNET_CONFIG_FILE, UNET_WEIGHTS_FILE] {
        if !cfg.unet.join(file).is_file() {
            errors.push(format!("{name}: unet folder \"{}\" has no {file}; expected a diffusers UNet2DModel folder", cfg.unet.display()));
        }
    }
    match sampler_class_count(&cfg.unet) {
        Err(e) => errors.push(format!("{name}: {e}")),
        Ok(None) => errors.push(format!(
            "{name}: unet \"{}\" is not class-conditional (num_class_embeds is null); expected a class-conditional model",
            cfg.unet.display()
        )),
        Ok(Some(_)) => {}
    }
}

/// `num_class_embeds` of a diffusers model folder's config.json, checked for what the sampler
/// can run, without loading weights.
fn sampler_class_count(folder: &Path) -> Result<Option<usize>, String> {
    let path = folder.join(UNET_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("unet config \"{}\": cannot read: {e}", path.display()))?;
    let config = UNet2DConfig::from_json_str(&text).map_err(|e| format!("unet config \"{}\": {e}", path.display()))?;
    Ok(config.num_class_embeds)
}

/// `None` when equal; otherwise what is missing, unexpected or out of order.
pub fn class_difference(expected: &[String], found: &[String]) -> Option<String> {
    if expected == found {
        return None;
    }
    let exp: BTreeSet<&String> = expected.iter().collect();
    let got: BTreeSet<&String> = found.iter().collect();
    let missing: Vec<String> = exp.difference(&got).map(|s| s.to_string()).collect();
    let extra: Vec<String> = got.difference(&exp).map(|s| s.to_string()).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing [{}]", quoted(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("unexpected [{}]", quoted(&extra)));
    }
    if parts.is_empty() {
        parts.push(format!("same names in another order: expected [{}], found [{}]", quoted(expected), quoted(found)));
    }
    Some(parts.join(", "))
}

fn quoted(items: &[String]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// The class count a safetensors oracle file declares, from its header only (`fc.weight`'s
/// first dimension). `None` for other formats or unreadable headers: the load will say why.
fn safetensors_fc_classes(path: &Path) -> Option<usize> {
    use std::io::Read;
    if path.extension()?.to_str()? != "safetensors" {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("fc.weight")?.get("shape")?.get(0)?.as_u64().map(|n| n as usize)
}
