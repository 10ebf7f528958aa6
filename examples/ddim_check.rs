//! A visual and oracle check of a trained DDPM, until the sampler stage lands: DDIM (eta 0)
//! samples of every class from a diffusers folder written by `rcaflow train ddpm`, saved as a
//! grid (one row per class), and, with an oracle, the share the oracle labels as intended.
//!
//!     cargo run --release --example ddim_check -- DDPM_DIR OUT.png [PER_CLASS] [STEPS] \
//!         [ORACLE.safetensors ARCH STEM]
//!
//! Initial noise comes from `models::noise` (seed 0, one stream per class), so a run repeats.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rcaflow::models::noise::standard_normal;
use rcaflow::models::preprocess::Normalization;
use rcaflow::models::schedulers::{Ddim, SchedulerConfig};
use rcaflow::models::unet::UNet2DModel;
use rcaflow::models::{Oracle, OracleConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: ddim_check DDPM_DIR OUT.png [PER_CLASS] [STEPS] [ORACLE.safetensors ARCH STEM]");
    }
    let dir = PathBuf::from(&args[0]);
    let out = PathBuf::from(&args[1]);
    let per_class: usize = args.get(2).map_or(Ok(8), |s| s.parse()).context("PER_CLASS")?;
    let steps: usize = args.get(3).map_or(Ok(50), |s| s.parse()).context("STEPS")?;
    let dev = Device::Cpu;
    let unet = UNet2DModel::load(&dir, &dev)?;
    let classes = unet.config().num_class_embeds.context("the model is not class-conditional")?;
    let (h, w) = unet.config().sample_size.map(|s| s.hw()).unwrap_or((32, 32));
    let sched = SchedulerConfig::load(&dir.join("scheduler_config.json"))?;
    let ddim = Ddim::new(sched, steps, 0.0);
    let n = per_class;
    let plane = 3 * h * w;
    let mut all: Vec<u8> = Vec::with_capacity(classes * n * plane);
    for c in 0..classes {
        let mut x = standard_normal(0, c as u64, n * plane);
        let labels = Tensor::from_vec(vec![c as u32; n], n, &dev)?;
        for &t in &ddim.timesteps {
            let xt = Tensor::from_vec(x.clone(), (n, 3, h, w), &dev)?;
            let eps: Vec<f32> = unet.forward(&xt, &Tensor::new(t as u32, &dev)?, Some(&labels))?.flatten_all()?.to_vec1()?;
            x = ddim.step(&eps, t, &x, None)?;
        }
        // Stored as uint8 the way the protocol quantises: round((x + 1) * 127.5), clamped.
        all.extend(x.iter().map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8));
        eprintln!("class {c}: {n} samples");
    }
    let mut grid = image::RgbImage::new((n * w) as u32, (classes * h) as u32);
    for (k, img) in all.chunks(plane).enumerate() {
        let (c, i) = (k / n, k % n);
        for y in 0..h {
            for xx in 0..w {
                let px = image::Rgb([img[y * w + xx], img[h * w + y * w + xx], img[2 * h * w + y * w + xx]]);
                grid.put_pixel((i * w + xx) as u32, (c * h + y) as u32, px);
            }
        }
    }
    grid.save(&out)?;
    println!("grid: {} ({classes} classes x {n} samples, DDIM {steps} steps)", out.display());
    if args.len() >= 7 {
        let cfg = OracleConfig { arch: args[5].parse()?, stem: args[6].parse()?, norm: Normalization::imagenet(), num_classes: classes };
        let oracle = Oracle::load(&PathBuf::from(&args[4]), &cfg, &dev)?;
        let logits = oracle.logits(&all, classes * n, h, w)?;
        let correct = logits
            .chunks(classes)
            .enumerate()
            .filter(|(k, row)| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j) == Some(k / n))
            .count();
        println!(
            "oracle accuracy on the samples: {:.3} ({correct}/{}; chance {:.3})",
            correct as f64 / (classes * n) as f64,
            classes * n,
            1.0 / classes as f64
        );
    }
    Ok(())
}
