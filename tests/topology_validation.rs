//! Topology validation on a set of bad files (tests/fixtures/topology/*.toml, one problem each,
//! plus one with many): loading fails with exactly the expected messages, every one naming its
//! component and saying what was expected and what was found, and all of them collected before
//! failing. A good file loads into a graph in data-flow order with the declared edges, and
//! `rcaflow validate` prints it (exit 0) or lists every error (exit 2) without loading a model:
//! the fixture weights file data/oracle.pth is empty, so any attempt to load it would fail.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::bin::{rcaflow, Ran};
use rcaflow::stages::{ComponentKind, Graph};
use rcaflow::topology::{ComponentType, Edge, Section};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topology")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A fixture path as messages show it (paths in a topology are resolved against its folder).
fn shown(relative: &str) -> String {
    fixtures().join(relative).display().to_string()
}

/// Loads a fixture, which must fail, and returns its messages.
fn errors_of(path: &Path) -> Vec<String> {
    match Graph::load(path) {
        Ok(graph) => panic!("{} should not validate, but gave:\n{graph}", path.display()),
        Err(e) => e.messages(),
    }
}

#[track_caller]
fn assert_errors(name: &str, expected: &[&str]) {
    let found = errors_of(&fixture(name));
    assert_eq!(found, expected, "{name}: messages differ");
    for message in &found {
        assert!(
            ["run:", "topology ", "sources.", "transforms.", "sinks."].iter().any(|p| message.starts_with(p)),
            "{name}: message names no component: {message}"
        );
        assert!(!message.contains('\n'), "{name}: message spans lines: {message}");
    }
}

/// Every fixture is covered by a test below (a new one cannot be forgotten).
const FIXTURES: &[&str] = &[
    "bad-restart.toml",
    "bad-sampler.toml",
    "bad-threads.toml",
    "classes-disagree.toml",
    "cycle.toml",
    "duplicate-id.toml",
    "duplicate-origin.toml",
    "good.toml",
    "input-produces-nothing.toml",
    "invalid-normalization.toml",
    "invalid-syntax.toml",
    "many-problems.toml",
    "missing-folder.toml",
    "missing-weights.toml",
    "oracle-takes-summaries.toml",
    "rca-takes-images.toml",
    "rca-without-real.toml",
    "sampler-model-mismatch.toml",
    "sink-without-inputs.toml",
    "source-with-inputs.toml",
    "stop-when-bad.toml",
    "stop-when-without-generated.toml",
    "unconsumed.toml",
    "unknown-arch.toml",
    "unknown-field.toml",
    "unknown-input.toml",
    "unknown-type.toml",
    "visual-metric-options.toml",
    "wrong-section.toml",
    "zero-capacity.toml",
    "zero-default-capacity.toml",
];

#[test]
fn every_fixture_has_a_test() {
    let mut found: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    found.sort();
    assert_eq!(found, FIXTURES);
}

// ---- graph shape ----

#[test]
fn unknown_input() {
    assert_errors(
        "unknown-input.toml",
        &[r#"sinks.report: input "fid" does not exist; known components: batches, generated, oracle, rca, real, report"#],
    );
}

#[test]
fn cycle() {
    assert_errors("cycle.toml", &["transforms.a: part of a cycle a -> b -> a; a topology must be acyclic"]);
}

#[test]
fn output_nobody_consumes() {
    assert_errors(
        "unconsumed.toml",
        &["transforms.thumbnails: its output (images) is not consumed by any component; expected it in some `inputs`"],
    );
}

#[test]
fn rca_taking_images() {
    assert_errors("rca-takes-images.toml", &[r#"sinks.rca: input "batches" (batcher) produces images, expected predictions"#]);
}

#[test]
fn oracle_taking_summaries() {
    assert_errors("oracle-takes-summaries.toml", &[r#"transforms.oracle: input "rca" (rca) produces summaries, expected images"#]);
}

#[test]
fn input_that_produces_nothing() {
    assert_errors("input-produces-nothing.toml", &[r#"sinks.rca: input "report" (report) produces nothing, expected predictions"#]);
}

#[test]
fn source_with_inputs() {
    assert_errors("source-with-inputs.toml", &[r#"sources.generated: a source takes no inputs, found inputs = ["real"]"#]);
}

#[test]
fn sink_without_inputs() {
    assert_errors(
        "sink-without-inputs.toml",
        &["sinks.report: `inputs` is missing or empty; expected the ids of components producing summaries"],
    );
}

#[test]
fn type_in_the_wrong_section() {
    assert_errors("wrong-section.toml", &[r#"transforms.rca: type "rca" belongs in [sinks.rca], found in [transforms]"#]);
}

#[test]
fn id_used_in_two_sections() {
    assert_errors("duplicate-id.toml", &[r#"sinks.real: id "real" is already used by sources.real; ids must be unique across sections"#]);
}

#[test]
fn two_sources_with_one_origin() {
    assert_errors(
        "duplicate-origin.toml",
        &[r#"sources.real: origin "real" is already produced by sources.generated; expected one source per origin"#],
    );
}

#[test]
fn rca_without_real_images_or_baseline() {
    assert_errors(
        "rca-without-real.toml",
        &[
            r#"sinks.rca: no real images reach it and no `baseline` is set; expected an image_folder source with origin = "real" upstream, or baseline = FILE"#,
        ],
    );
}

#[test]
fn rca_stop_when_checks_its_rule_and_needs_a_sampler() {
    assert_errors(
        "stop-when-bad.toml",
        &[
            "sinks.rca: stop_when.ci_half_width must be a number in (0, 0.5), found 0.5",
            "sinks.rca: stop_when.min_per_class must be at least 1 image, found 0",
            "sinks.rca: stop_when stops sampling; expected the generated images to come from a ddpm_sampler source, found image_folder",
        ],
    );
    assert_errors(
        "stop-when-without-generated.toml",
        &["sinks.rca: stop_when needs generated images; expected a ddpm_sampler source upstream"],
    );
}

#[test]
fn visual_metric_sinks_check_their_options() {
    let missing = shown("data/missing-stats.npz");
    assert_errors(
        "visual-metric-options.toml",
        &[
            r#"sinks.lpips: unknown lpips net "squeeze": expected "alex" or "vgg""#,
            "sinks.fid: interval_secs must be a positive number of seconds up to 2592000 (30 days), found 0",
            &format!(r#"sinks.fid_ref: reference statistics file "{missing}" does not exist"#),
            "sinks.is: splits must be at least 1, found 0",
            r#"sinks.fid: no real images reach it and no `reference` is set; expected an image_folder source with origin = "real" upstream, or reference = FILE"#,
        ],
    );
}

// ---- restart policies ----

#[test]
fn restart_only_on_stateless_transforms_and_as_a_table() {
    assert_errors(
        "bad-restart.toml",
        &[
            "transforms.oracle: restart must be a table { max = N } with N >= 0, found 2",
            "sinks.rca: restart is for stateless transforms (oracle_classifier, inception_v3); a rca keeps state a restart would lose, and resumes from its checkpoint instead",
        ],
    );
}

// ---- thread pools ----

#[test]
fn stage_thread_counts_must_be_whole_numbers_in_range() {
    assert_errors(
        "bad-threads.toml",
        &[
            "transforms.oracle: threads must be a whole number of CPU threads from 1 to 1024, found 0",
            r#"sinks.rca: threads must be a whole number of CPU threads from 1 to 1024, found "two""#,
        ],
    );
}

// ---- capacities ----

#[test]
fn zero_capacity() {
    assert_errors("zero-capacity.toml", &["transforms.oracle: capacity must be at least 1 batch, found 0"]);
}

#[test]
fn zero_default_capacity() {
    assert_errors("zero-default-capacity.toml", &["run: default_capacity must be at least 1 batch, found 0"]);
}

// ---- files on disk and class lists ----

#[test]
fn missing_image_folder() {
    assert_errors(
        "missing-folder.toml",
        &[&format!(r#"sources.generated: image folder "{}" does not exist or is not a directory"#, shown("data/missing"))],
    );
}

#[test]
fn sampler_options_out_of_range_and_missing_model() {
    assert_errors(
        "bad-sampler.toml",
        &[
            "sources.sampler: per_class must be at least 1 image, found 0",
            "sources.sampler: unit_size must be at least 1 image, found 0",
            "sources.sampler: replicas must be at least 1 replica, found 0",
            "sources.sampler: steps must be at least 1, found 0",
            "sources.sampler: eta must be a finite number >= 0, found -1",
            &format!(r#"sources.sampler: unet folder "{}" does not exist; expected a diffusers model folder"#, shown("data/no-such-unet")),
        ],
    );
}

#[test]
fn sampler_model_without_weights_or_with_other_classes() {
    let unet = shown("data/unet5");
    assert_errors(
        "sampler-model-mismatch.toml",
        &[
            &format!(
                r#"sources.sampler: unet folder "{unet}" has no diffusion_pytorch_model.safetensors; expected a diffusers UNet2DModel folder"#
            ),
            &format!(r#"sources.sampler: unet "{unet}" has num_class_embeds = 5, the topology has 3 classes"#),
        ],
    );
}

#[test]
fn missing_weights_file() {
    assert_errors("missing-weights.toml", &[&format!(r#"transforms.oracle: weights file "{}" does not exist"#, shown("data/missing.pth"))]);
}

#[test]
fn class_folders_that_disagree() {
    assert_errors(
        "classes-disagree.toml",
        &[&format!(
            r#"sources.generated: class folders of "{}" disagree with sources.real: missing ["crimson"], unexpected ["emerald"]"#,
            shown("data/generated-other")
        )],
    );
}

/// The class count of a safetensors oracle comes from its header (`fc.weight`'s rows): 5 rows
/// against 3 class folders is an error, found without loading the model.
#[test]
fn oracle_classes_disagree_with_folders() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("oracle.safetensors");
    let state = HashMap::from([
        ("fc.weight".to_string(), Tensor::zeros((5, 512), DType::F32, &Device::Cpu).unwrap()),
        ("fc.bias".to_string(), Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap()),
    ]);
    candle_core::safetensors::save(&state, &weights).unwrap();
    let good = std::fs::read_to_string(fixture("good.toml")).unwrap();
    let text = good
        .replace(r#""data/real""#, &format!("'{}'", shown("data/real")))
        .replace(r#""data/generated""#, &format!("'{}'", shown("data/generated")))
        .replace(r#""data/oracle.pth""#, r#""oracle.safetensors""#);
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, text).unwrap();
    assert_eq!(
        errors_of(&topology),
        [format!(r#"transforms.oracle: weights "{}" classify 5 classes (fc.weight), the topology has 3 classes"#, weights.display())]
    );

    // The same file with 3 rows is fine.
    let state = HashMap::from([("fc.weight".to_string(), Tensor::zeros((3, 512), DType::F32, &Device::Cpu).unwrap())]);
    candle_core::safetensors::save(&state, &weights).unwrap();
    let graph = Graph::load(&topology).unwrap();
    assert_eq!(graph.classes, ["amber", "azure", "crimson"]);
}

// ---- component types and fields ----

/// Every component type, in the order messages list them.
const KNOWN_TYPES: &str =
    "image_folder, ddpm_sampler, batcher, oracle_classifier, inception_v3, rca, fid, inception_score, kid, precision_recall, lpips_diversity, save_images, report";

#[test]
fn unknown_component_type() {
    assert_errors("unknown-type.toml", &[&format!("sinks.fvd: unknown type \"fvd\"; expected one of {KNOWN_TYPES}")]);
}

#[test]
fn unknown_field() {
    assert_errors(
        "unknown-field.toml",
        &["transforms.oracle: unknown field `num_classes`, expected one of `weights`, `arch`, `stem`, `normalization`, `device`"],
    );
}

#[test]
fn unknown_arch() {
    assert_errors(
        "unknown-arch.toml",
        &[r#"transforms.oracle: unknown resnet architecture "resnet50": expected "resnet18" or "resnet34""#],
    );
}

#[test]
fn invalid_normalization() {
    assert_errors(
        "invalid-normalization.toml",
        &[
            r#"transforms.oracle: invalid normalization "0.5,0.5/0.5,0.5,0.5": expected 3 means, got 2; expected "imagenet", "minus-one-one" or "M,M,M/S,S,S" (three means, then three stds > 0)"#,
        ],
    );
}

#[test]
fn invalid_toml() {
    let path = fixture("invalid-syntax.toml");
    assert_errors(
        "invalid-syntax.toml",
        &[&format!("topology {}: invalid TOML: line 20, column 1: missing comma between array elements, expected `,`", path.display())],
    );
}

#[test]
fn unreadable_file() {
    let path = fixture("no-such-topology.toml");
    let messages = errors_of(&path);
    assert_eq!(messages.len(), 1);
    let prefix = format!("topology {}: cannot read: ", path.display());
    assert!(messages[0].starts_with(&prefix), "{messages:?}");
}

// ---- all errors at once ----

fn many_problems() -> Vec<String> {
    [
        "run: default_capacity must be at least 1 batch, found 0",
        "transforms.oracle: capacity must be at least 1 batch, found 0",
        r#"sources.generated: a source takes no inputs, found inputs = ["real"]"#,
        "sinks.report: `inputs` is missing or empty; expected the ids of components producing summaries",
        r#"transforms.batches: input "extra" does not exist; known components: batches, generated, oracle, rca, real, report"#,
        r#"sinks.rca: input "batches" (batcher) produces images, expected predictions"#,
        "sources.real: unit_size must be at least 1 image, found 0",
        &format!(r#"sources.generated: image folder "{}" does not exist or is not a directory"#, shown("data/missing")),
        "transforms.batches: batch_size must be at least 1 image, found 0",
        &format!(r#"transforms.oracle: weights file "{}" does not exist"#, shown("data/missing.pth")),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn every_error_is_collected() {
    let expected = many_problems();
    let refs: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_errors("many-problems.toml", &refs);
}

// ---- a good file ----

#[test]
fn good_file_loads_in_data_flow_order() {
    let path = fixture("good.toml");
    let graph = Graph::load(&path).unwrap();
    assert_eq!(graph.label, path.display().to_string());
    assert_eq!(graph.run_dir, Some(fixtures().join("runs/good")));
    assert_eq!(graph.classes, ["amber", "azure", "crimson"]);

    let order: Vec<String> = graph.components.iter().map(|c| c.qualified()).collect();
    assert_eq!(order, ["sources.real", "sources.generated", "transforms.batches", "transforms.oracle", "sinks.rca", "sinks.report"]);
    let position = |id: &str| graph.components.iter().position(|c| c.id == id).unwrap();
    for edge in &graph.edges {
        assert!(position(&edge.from) < position(&edge.to), "{} comes before its input", edge.name());
    }

    let edge = |from: &str, to: &str, capacity| Edge { from: from.into(), to: to.into(), capacity };
    assert_eq!(
        graph.edges,
        [
            edge("real", "batches", 3),
            edge("generated", "batches", 3),
            edge("batches", "oracle", 2),
            edge("oracle", "rca", 3),
            edge("rca", "report", 3),
        ]
    );
    assert_eq!(graph.inputs_of("batches").count(), 2);
    assert_eq!(graph.outputs_of("oracle").map(|e| e.name()).collect::<Vec<_>>(), ["oracle->rca"]);

    let sections: Vec<Section> = graph.components.iter().map(|c| c.section).collect();
    assert_eq!(sections, [Section::Sources, Section::Sources, Section::Transforms, Section::Transforms, Section::Sinks, Section::Sinks]);
    match &graph.component("real").unwrap().kind {
        ComponentKind::ImageFolder(c) => {
            assert_eq!(c.path, fixtures().join("data/real"));
            assert_eq!(c.unit_size, 8);
        }
        other => panic!("sources.real is {}", other.info().name),
    }
    match &graph.component("generated").unwrap().kind {
        ComponentKind::ImageFolder(c) => assert_eq!(c.unit_size, 64, "default unit_size"),
        other => panic!("sources.generated is {}", other.info().name),
    }
    match &graph.component("batches").unwrap().kind {
        ComponentKind::Batcher(c) => assert_eq!(c.batch_size, 16),
        other => panic!("transforms.batches is {}", other.info().name),
    }
    match &graph.component("oracle").unwrap().kind {
        ComponentKind::OracleClassifier(c) => {
            assert_eq!(c.weights, fixtures().join("data/oracle.pth"));
            assert_eq!(c.arch.to_string(), "resnet18");
            assert_eq!(c.stem.to_string(), "cifar");
            assert_eq!(c.normalization.to_string(), "minus-one-one");
        }
        other => panic!("transforms.oracle is {}", other.info().name),
    }
    match &graph.component("report").unwrap().kind {
        ComponentKind::Report(c) => assert!(!c.figures),
        other => panic!("sinks.report is {}", other.info().name),
    }
}

// ---- the command line ----

fn validate_cli(topology: &Path) -> Ran {
    Ran::of(rcaflow().args(["validate", "--topology"]).arg(topology))
}

#[test]
fn cli_validate_prints_the_graph() {
    // data/oracle.pth is empty: had validate loaded the model, it would have failed.
    assert_eq!(std::fs::metadata(fixture("data/oracle.pth")).unwrap().len(), 0);
    let out = validate_cli(&fixture("good.toml"));
    let (stdout, stderr) = (out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("topology {}: 6 components, 5 edges, 3 classes", fixture("good.toml").display()));
    assert!(lines.contains(&"classes: amber, azure, crimson"), "{stdout}");
    for (component, kind) in [
        ("sources.real", "image_folder"),
        ("sources.generated", "image_folder"),
        ("transforms.batches", "batcher"),
        ("transforms.oracle", "oracle_classifier"),
        ("sinks.rca", "rca"),
        ("sinks.report", "report"),
    ] {
        assert!(lines.iter().any(|l| l.split_whitespace().take(2).eq([component, kind])), "{component} ({kind}) not listed:\n{stdout}");
    }
    for edge in [
        "  real -> batches (capacity 3 batches)",
        "  generated -> batches (capacity 3 batches)",
        "  batches -> oracle (capacity 2 batches)",
        "  oracle -> rca (capacity 3 batches)",
        "  rca -> report (capacity 3 batches)",
    ] {
        assert!(lines.contains(&edge), "edge {edge:?} not listed:\n{stdout}");
    }
    assert_eq!(lines.last(), Some(&"ok"));
}

#[test]
fn cli_validate_lists_every_error_and_exits_2() {
    let path = fixture("many-problems.toml");
    let out = validate_cli(&path);
    let (stdout, stderr) = (out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "");
    let errors = many_problems();
    let mut expected = format!("error: topology {}: {} errors:\n", path.display(), errors.len());
    for e in &errors {
        expected += &format!("  - {e}\n");
    }
    assert_eq!(stderr, expected);
}

#[test]
fn cli_validate_does_not_load_the_oracle() {
    // The weights file exists but is empty: the only complaint is the topology's own problem.
    let path = fixture("zero-capacity.toml");
    let out = validate_cli(&path);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        out.stderr,
        format!("error: topology {}: 1 error:\n  - transforms.oracle: capacity must be at least 1 batch, found 0\n", path.display())
    );
}
