//! Topology validation: from the raw TOML to a checked [`Graph`]. Every problem is collected
//! before failing (as Vector does), and each message names its component and says what was
//! expected and what was found. The graph rules are here; each component's own checks are in its
//! file under `src/stages/`, reached through [`ComponentType`]. Nothing here loads a model:
//! weights are checked for existence and, for safetensors, by reading the file header alone
//! (loading them is the build step's job).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::component::{Checks, ComponentType, GraphFacts};
use super::config::{parse_component, Component, RawTopology, Section, DEFAULT_CAPACITY};
use super::{Edge, Graph};
use crate::files::name::check_class_names;
use crate::units::Origin;

/// Validates a parsed file. `Err` holds every message, one line each.
pub(crate) fn validate<K: ComponentType>(raw: RawTopology, base: &Path) -> Result<Graph<K>, Vec<String>> {
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
            match parse_component::<K>(section, &id, table, default_capacity, &mut errors) {
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
        let home = c.kind.info().section;
        if home != c.section {
            errors.push(format!(
                "{name}: type \"{}\" belongs in [{}.{}], found in [{}]",
                c.kind.info().name,
                home.as_str(),
                c.id,
                c.section.as_str()
            ));
        }
        match (c.kind.info().accepts, c.inputs.is_empty()) {
            (None, false) => errors.push(format!("{name}: a source takes no inputs, found inputs = [{}]", quoted(&c.inputs))),
            (Some(kind), true) => {
                errors.push(format!("{name}: `inputs` is missing or empty; expected the ids of components producing {kind}"))
            }
            _ => {}
        }
    }

    // 3. Inputs exist and produce what their consumer accepts.
    let by_id: BTreeMap<&str, &Component<K>> = components.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut edges = Vec::new();
    for c in &components {
        let Some(accepts) = c.kind.info().accepts else { continue };
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
            match producer.kind.info().produces {
                Some(kind) if kind == accepts => edges.push(Edge { from: input.clone(), to: c.id.clone(), capacity: c.capacity }),
                Some(kind) => errors.push(format!(
                    "{}: input \"{input}\" ({}) produces {kind}, expected {accepts}",
                    c.qualified(),
                    producer.kind.info().name
                )),
                None => errors.push(format!(
                    "{}: input \"{input}\" ({}) produces nothing, expected {accepts}",
                    c.qualified(),
                    producer.kind.info().name
                )),
            }
        }
    }

    // 4. Nothing produced is left unread.
    for c in &components {
        if c.kind.info().needs_consumer() && !edges.iter().any(|e| e.from == c.id) && !read_by_rejected.contains(&c.id) {
            errors.push(format!(
                "{}: its output ({}) is not consumed by any component; expected it in some `inputs`",
                c.qualified(),
                c.kind.info().produces.map(|k| k.to_string()).unwrap_or_default()
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

    // 6. Each component's own settings and files; the class lists agree.
    let classes = check_components(&components, &raw.run.classes, &mut errors);

    // 7. Origins: one source each.
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

    // The type of the generated-images source (there is at most one that counts).
    let generated_source = components.iter().find(|c| c.kind.source_origin() == Some(Origin::Generated)).map(|c| c.kind.info().name);

    // 8. Checks that need the whole graph (class list, real images upstream), component by component.
    for c in &components {
        let origins = upstream_origins(&c.id, &by_id, &edges);
        let real_images_upstream = origins.as_ref().map(|origins| origins.contains(&Origin::Real));
        let generated_images_upstream = origins.as_ref().map(|origins| origins.contains(&Origin::Generated));
        let facts = GraphFacts { classes: classes.as_deref(), real_images_upstream, generated_images_upstream, generated_source };
        let name = c.qualified();
        c.kind.check_in_graph(&facts, &mut Checks::new(&name, &mut errors));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut by_id: BTreeMap<String, Component<K>> = components.into_iter().map(|c| (c.id.clone(), c)).collect();
    let components = order.iter().filter_map(|id| by_id.remove(id)).collect();
    Ok(Graph {
        label: String::new(),
        run_dir: raw.run.dir.map(|d| super::config::resolve(base, &d)),
        components,
        edges,
        classes: classes.unwrap_or_default(),
        overrides: Vec::new(),
    })
}

/// Kahn's algorithm; on a cycle, returns one cycle as a path of ids (first id repeated last).
fn topological_order<K>(components: &[Component<K>], edges: &[Edge]) -> Result<Vec<String>, Vec<String>> {
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
fn upstream_origins<K: ComponentType>(id: &str, by_id: &BTreeMap<&str, &Component<K>>, edges: &[Edge]) -> Option<BTreeSet<Origin>> {
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

/// Runs each component's own checks and gathers the class lists they name (image folders),
/// which must all agree. Returns the class list: `[run] classes`, else the first image folder
/// of real images, else the first other one (by id).
fn check_components<K: ComponentType>(
    components: &[Component<K>],
    declared: &Option<Vec<String>>,
    errors: &mut Vec<String>,
) -> Option<Vec<String>> {
    // Class names become folder names (save_images): each must be one harmless path component.
    if let Some(Err(e)) = declared.as_ref().map(|names| check_class_names(names)) {
        errors.push(format!("run.classes: {e}"));
    }
    let mut reference: Option<(String, Vec<String>)> = declared.clone().map(|classes| ("run.classes".to_string(), classes));
    // Real images are the ground truth: other folders are compared with them, not the reverse.
    let mut ordered: Vec<&Component<K>> = components.iter().collect();
    ordered.sort_by_key(|c| c.kind.source_origin() != Some(Origin::Real));
    for c in ordered {
        let name = c.qualified();
        let mut checks = Checks::new(&name, errors);
        c.kind.check(&mut checks);
        let Some(found) = c.kind.class_names(&mut checks) else { continue };
        if let Err(e) = check_class_names(&found.names) {
            checks.error(format!("class folder of \"{}\": {e}", found.folder.display()));
            continue;
        }
        match &reference {
            None => reference = Some((name.clone(), found.names)),
            Some((ref_name, ref_classes)) => {
                if let Some(diff) = class_difference(ref_classes, &found.names) {
                    checks.error(format!("class folders of \"{}\" disagree with {ref_name}: {diff}", found.folder.display()));
                }
            }
        }
    }
    reference.map(|(_, classes)| classes)
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

/// Items as `"a", "b"`, for messages.
fn quoted(items: &[String]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}
