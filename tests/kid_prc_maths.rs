//! KID, precision/recall, density and coverage against torch-fidelity 0.4.0 and prdc
//! (scripts/make_kid_prc_fixtures.py → tests/fixtures/kid_prc/reference.json). The features are
//! regenerated from the shared PRNG, so only the reference numbers are committed.

mod common;

use rcaflow::metrics::kid::kid;
use rcaflow::metrics::prc::prdc;
use serde_json::Value;

fn reference() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kid_prc/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The script's `features(spec)`.
fn features(spec: &Value) -> (Vec<f32>, usize) {
    let key = spec["key"].as_str().unwrap();
    let (n, d) = (spec["n"].as_u64().unwrap() as usize, spec["d"].as_u64().unwrap() as usize);
    let x = match spec["kind"].as_str().unwrap() {
        "uniform" => common::prng::uniform_f32(key, n * d, spec["lo"].as_f64().unwrap(), spec["hi"].as_f64().unwrap()),
        "grid" => {
            let (levels, step) = (spec["levels"].as_f64().unwrap(), spec["step"].as_f64().unwrap());
            common::prng::uniform01(key, n * d).map(|u| ((u * levels).floor() * step) as f32).collect()
        }
        other => panic!("unknown feature kind {other}"),
    };
    (x, d)
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn kid_of_one_whole_subset_equals_torch_fidelity() {
    let r = reference();
    let cases: Vec<&Value> = r["kid"].as_array().unwrap().iter().filter(|c| c["subsets"] == 1).collect();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let ((g, d), (x, _)) = (features(&case["generated"]), features(&case["real"]));
        let m = case["subset_size"].as_u64().unwrap() as usize;
        // Any number of subsets: with subset_size = n each is the whole set.
        let k = kid(&g, &x, d, 100, m, 0).unwrap();
        let want = f64_of(&case["mean"]);
        let rel = (k.mean - want).abs() / want.abs();
        println!("{}: kid {} vs torch-fidelity {want}, rel err {rel:.2e}", case["name"], k.mean);
        assert!(rel <= 1e-6, "{}: {} vs {want}", case["name"], k.mean);
        assert_eq!((k.std, k.subsets, k.subset_size), (0.0, 100, m));
        // A larger subset_size is clipped to the sets.
        assert_eq!(kid(&g, &x, d, 3, m + 50, 0).unwrap().subset_size, m);
    }
}

#[test]
fn kid_over_subsets_is_deterministic_and_within_three_standard_errors_of_torch_fidelity() {
    let r = reference();
    let case = r["kid"].as_array().unwrap().iter().find(|c| c["name"] == "subsets").unwrap();
    let ((g, d), (x, _)) = (features(&case["generated"]), features(&case["real"]));
    let (subsets, m) = (case["subsets"].as_u64().unwrap() as usize, case["subset_size"].as_u64().unwrap() as usize);
    let ours = kid(&g, &x, d, subsets, m, 0).unwrap();
    assert_eq!(ours, kid(&g, &x, d, subsets, m, 0).unwrap(), "the seeded draw is deterministic");
    assert_ne!(ours.mean, kid(&g, &x, d, subsets, m, 1).unwrap().mean, "another seed draws other subsets");
    let (mean, std) = (f64_of(&case["mean"]), f64_of(&case["std"]));
    // The recorded per-subset values reproduce torch-fidelity's mean and std (np.std, ddof 0).
    let mmds: Vec<f64> = case["mmds"].as_array().unwrap().iter().map(f64_of).collect();
    let (m2, s2) = rcaflow::metrics::kid::mean_std(&mmds);
    assert!((m2 - mean).abs() <= 1e-12 * mean && (s2 - std).abs() <= 1e-10 * std);
    // Two independent estimates of the same expectation: their difference has standard error
    // sqrt(std_a^2 + std_b^2) / sqrt(subsets).
    let se = (ours.std.powi(2) + std.powi(2)).sqrt() / (subsets as f64).sqrt();
    println!("kid over {subsets} subsets: {} ± {} vs torch-fidelity {mean} ± {std}; se {se:.3e}", ours.mean, ours.std);
    assert!((ours.mean - mean).abs() <= 3.0 * se, "{} vs {mean}, se {se}", ours.mean);
    assert!(ours.std > 0.5 * std && ours.std < 2.0 * std, "std {} vs {std}", ours.std);
}

#[test]
fn precision_recall_equal_torch_fidelity_and_density_coverage_equal_prdc() {
    for case in reference()["prc"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ((g, d), (x, _)) = (features(&case["generated"]), features(&case["real"]));
        let k = case["k"].as_u64().unwrap() as usize;
        let r = prdc(&g, &x, d, k).unwrap();
        println!("{name}: {r:?}");
        // torch-fidelity's value is the float32 mean of 0/1 flags: count / n in float32.
        let as_torch = |count: usize, n: usize| f64::from(count as f32 / n as f32);
        assert_eq!(as_torch(r.precise, r.generated_images), f64_of(&case["precision"]), "{name}: precision");
        assert_eq!(as_torch(r.recalled, r.real_images), f64_of(&case["recall"]), "{name}: recall");
        assert!((r.density - f64_of(&case["density"])).abs() <= 1e-12, "{name}: density {} vs {}", r.density, case["density"]);
        assert_eq!(r.coverage, f64_of(&case["coverage"]), "{name}: coverage");
    }
}
