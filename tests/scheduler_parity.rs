//! DDPM and DDIM step maths against diffusers' schedulers (fixtures from
//! scripts/make_scheduler_fixtures.py): timesteps exactly, alphas_cumprod, `step` given the same
//! model output, sample and variance noise, `add_noise`, and a whole 10-step DDIM (eta = 0)
//! chain with a fake model.

use std::collections::HashMap;

use rcaflow::models::schedulers::{add_noise, Ddim, Ddpm, Scheduler, SchedulerConfig};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    ddim_chain: Chain,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    config: serde_json::Value,
    steps: usize,
    eta: f32,
    timesteps: Vec<usize>,
    alphas_cumprod: HashMap<String, f32>,
    step_cases: Vec<StepCase>,
    add_noise: AddNoise,
}

#[derive(Deserialize)]
struct StepCase {
    t: usize,
    model_output: Vec<f32>,
    sample: Vec<f32>,
    noise: Vec<f32>,
    prev_sample: Vec<f32>,
}

#[derive(Deserialize)]
struct AddNoise {
    t: usize,
    original: Vec<f32>,
    noise: Vec<f32>,
    noisy: Vec<f32>,
}

#[derive(Deserialize)]
struct Chain {
    steps: usize,
    x_t: Vec<f32>,
    #[serde(rename = "final")]
    final_sample: Vec<f32>,
}

fn fixture() -> Fixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers/cases.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn scheduler(case: &Case) -> (SchedulerConfig, Scheduler) {
    let config: SchedulerConfig = serde_json::from_value(case.config.clone()).unwrap();
    let s = match case.kind.as_str() {
        "ddpm" => Scheduler::Ddpm(Ddpm::new(config.clone(), case.steps)),
        _ => Scheduler::Ddim(Ddim::new(config.clone(), case.steps, case.eta)),
    };
    (config, s)
}

#[test]
fn timesteps_and_alphas_equal_diffusers() {
    let mut worst = 0.0f64;
    for case in fixture().cases {
        let (config, s) = scheduler(&case);
        assert_eq!(s.timesteps(), case.timesteps.as_slice(), "{}: timesteps", case.name);
        let alphas = config.alphas_cumprod();
        for (i, want) in &case.alphas_cumprod {
            let got = alphas[i.parse::<usize>().unwrap()];
            let rel = ((got - want).abs() / want.abs()) as f64;
            worst = worst.max(rel);
            assert!(rel <= 1e-6, "{}: alphas_cumprod[{i}] {got} vs diffusers {want}", case.name);
        }
    }
    println!("alphas_cumprod: max relative error {worst:.3e}");
}

#[test]
fn steps_and_add_noise_equal_diffusers() {
    let mut worst = 0.0f32;
    for case in fixture().cases {
        let (config, s) = scheduler(&case);
        for st in &case.step_cases {
            let noise = s.needs_noise(st.t).then_some(st.noise.as_slice());
            let got = s.step(&st.model_output, st.t, &st.sample, noise).unwrap();
            let err = max_abs(&got, &st.prev_sample);
            worst = worst.max(err);
            assert!(err <= 1e-5, "{} t={}: max abs error {err}", case.name, st.t);
        }
        let a = &case.add_noise;
        let got = add_noise(&config.alphas_cumprod(), &a.original, &a.noise, a.t);
        assert!(max_abs(&got, &a.noisy) <= 1e-6, "{}: add_noise", case.name);
    }
    println!("step: max abs error {worst:.3e} over all cases");
}

#[test]
fn a_whole_ddim_chain_equals_diffusers() {
    let chain = fixture().ddim_chain;
    let s = Scheduler::Ddim(Ddim::new(SchedulerConfig::ddim_default(), chain.steps, 0.0));
    let mut x = chain.x_t.clone();
    for &t in s.timesteps() {
        let eps: Vec<f32> = x.iter().map(|&v| 0.1 * v + 0.05 * t as f32 / 1000.0).collect();
        x = s.step(&eps, t, &x, None).unwrap();
    }
    let err = max_abs(&x, &chain.final_sample);
    println!("10-step DDIM chain: max abs error {err:.3e}");
    assert!(err <= 1e-5, "max abs error {err}");
}
