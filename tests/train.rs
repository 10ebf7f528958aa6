//! The trainers on tiny synthetic sets: a few steps reduce the loss, a resumed DDPM checkpoint
//! takes exactly the next step of an uninterrupted run, and what training writes loads back
//! into the evaluation side (the oracle stage's `Oracle`, `UNet2DModel::load`, the scheduler
//! config reader, `rcaflow baseline`'s file).

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::bin::{rcaflow, Ran};
use rcaflow::data::synth::{generate, SynthConfig};
use rcaflow::models::preprocess::Normalization;
use rcaflow::models::resnet::{BnMode, ResNetArch, ResNetConfig, Stem};
use rcaflow::models::schedulers::SchedulerConfig;
use rcaflow::models::unet::{UNet2DConfig, UNet2DModel};
use rcaflow::models::{Oracle, OracleConfig};
use rcaflow::train::dataset::Dataset;
use rcaflow::train::ddpm::{DdpmTrainConfig, DdpmTrainer, SCHEDULER_FILE};
use rcaflow::train::oracle::{cross_entropy, train_oracle, OracleTrainConfig};
use rcaflow::train::resnet::TrainableResNet;

fn synth(dir: &Path, classes: usize, per_class: usize, size: usize) -> Dataset {
    generate(&SynthConfig { classes, per_class, size, similarity: 0.0, seed: 4 }, dir, || {}).unwrap();
    Dataset::load(dir).unwrap()
}

/// Mean cross-entropy over `data` (no augmentation) with BatchNorm in `mode`.
fn mean_loss(net: &TrainableResNet, data: &Dataset, mode: BnMode) -> f32 {
    let idx: Vec<usize> = (0..data.len()).collect();
    let (px, labels) = data.batch(&idx, None);
    let x =
        Normalization::imagenet().to_input(&Tensor::from_vec(px, (idx.len(), 3, data.height, data.width), &Device::Cpu).unwrap()).unwrap();
    let y = Tensor::from_vec(labels, idx.len(), &Device::Cpu).unwrap();
    cross_entropy(&net.forward(&x, mode).unwrap(), &y).unwrap().0.to_scalar().unwrap()
}

#[test]
fn oracle_training_reduces_the_loss_and_its_file_loads_as_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 3, 8, 16);
    // A narrow ResNet-18 (width 16, as the demo oracle): the oracle reads the width from the file.
    let cfg = OracleTrainConfig {
        resnet: ResNetConfig { width: 16, ..ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, 3) },
        norm: Normalization::imagenet(),
        warmup_epochs: 0,
        epochs: 4,
        lr: 1e-3,
        weight_decay: 0.01,
        batch_size: 8,
        seed: 1,
    };
    // The untrained network (same seed, so the same initial weights), batch statistics.
    let before = mean_loss(&TrainableResNet::new(&cfg.resnet, cfg.seed, &Device::Cpu).unwrap(), &data, BnMode::Train);
    let mut epochs = 0;
    let (net, reports) = train_oracle(&data, Some(&data), &cfg, None, &Device::Cpu, |_, _| {}, |_| epochs += 1).unwrap();
    assert_eq!((epochs, reports.len()), (4, 4));
    assert!(reports[3].loss < reports[0].loss, "{reports:?}");

    // Saved with torchvision's names, it loads as the evaluation oracle and agrees with the
    // training network in eval mode.
    let path = dir.path().join("oracle.safetensors");
    net.save(&path).unwrap();
    let oc = OracleConfig { arch: cfg.resnet.arch, stem: cfg.resnet.stem, norm: cfg.norm, num_classes: 3 };
    let oracle = Oracle::load(&path, &oc, &Device::Cpu).unwrap();
    let idx: Vec<usize> = (0..data.len()).collect();
    let (px, _) = data.batch(&idx, None);
    let theirs = oracle.logits(&px, data.len(), data.height, data.width).unwrap();
    let x = cfg.norm.to_input(&Tensor::from_vec(px, (data.len(), 3, 16, 16), &Device::Cpu).unwrap()).unwrap();
    let ours: Vec<f32> = net.forward(&x, BnMode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "logits differ by {diff}");
    // The objective itself (batch statistics, no augmentation) went down.
    let after = mean_loss(&net, &data, BnMode::Train);
    assert!(after < 0.7 * before, "loss {before} before, {after} after training");
}

#[test]
fn warm_up_trains_only_fc_and_needs_init() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 2, 4, 16);
    let resnet = ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, 2);
    let cfg = OracleTrainConfig {
        resnet,
        norm: Normalization::imagenet(),
        warmup_epochs: 1,
        epochs: 0,
        lr: 1e-2,
        weight_decay: 0.0,
        batch_size: 4,
        seed: 3,
    };
    let e = train_oracle(&data, None, &cfg, None, &Device::Cpu, |_, _| {}, |_| {}).unwrap_err().to_string();
    assert_eq!(e, "train: --warmup-epochs needs --init: a frozen backbone is only useful when it is pretrained");
    // A "pretrained" file with another class count: backbone loaded, fc fresh.
    let pre = TrainableResNet::new(&ResNetConfig { num_classes: 5, ..resnet }, 9, &Device::Cpu).unwrap();
    let path = dir.path().join("pre.safetensors");
    pre.save(&path).unwrap();
    let w = rcaflow::models::WeightMap::load(&path, &Device::Cpu).unwrap();
    let (net, _) = train_oracle(&data, None, &cfg, Some(&w), &Device::Cpu, |_, _| {}, |_| {}).unwrap();
    let sd = net.state_dict().unwrap();
    let psd = pre.state_dict().unwrap();
    let same = |k: &str| {
        let d = (&sd[k] - &psd[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d == 0.0
    };
    assert!(same("layer3.1.conv2.weight") && same("bn1.running_mean") && same("layer1.0.bn1.weight"), "the backbone is frozen");
    assert_eq!(sd["fc.weight"].dims(), &[2, 512]);
}

fn tiny_unet(classes: usize) -> UNet2DConfig {
    UNet2DConfig {
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        norm_num_groups: 4,
        attention_head_dim: Some(8),
        num_class_embeds: Some(classes),
        ..Default::default()
    }
}

fn ddpm_cfg() -> DdpmTrainConfig {
    DdpmTrainConfig {
        batch_size: 6,
        lr: 2e-3,
        weight_decay: 0.0,
        ema_decay: 0.999,
        grad_clip: Some(1.0),
        seed: 7,
        num_train_timesteps: 1000,
    }
}

#[test]
fn ddpm_training_reduces_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 3, 4, 8);
    let mut t = DdpmTrainer::new(&tiny_unet(3), data, ddpm_cfg(), &Device::Cpu).unwrap();
    // The same batches, timesteps and noise (steps 0..8) scored before and after training.
    let probe = |t: &mut DdpmTrainer| (0..8).map(|k| t.peek_loss(k).unwrap()).sum::<f64>() / 8.0;
    let before = probe(&mut t);
    for _ in 0..40 {
        t.train_step().unwrap();
    }
    let after = probe(&mut t);
    assert!(after < 0.8 * before, "loss {before} before, {after} after 40 steps");
    assert_eq!(t.losses().len(), 40);
}

#[test]
fn resumed_checkpoint_takes_the_same_next_step_and_loads_in_the_evaluation_side() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(&dir.path().join("data"), 2, 3, 8);
    let snapshot =
        |t: &DdpmTrainer| -> Vec<Vec<f32>> { t.vars().iter().map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap()).collect() };

    let mut straight = DdpmTrainer::new(&tiny_unet(2), data.clone(), ddpm_cfg(), &Device::Cpu).unwrap();
    for _ in 0..3 {
        straight.train_step().unwrap();
    }
    let mut first = DdpmTrainer::new(&tiny_unet(2), data.clone(), ddpm_cfg(), &Device::Cpu).unwrap();
    first.train_step().unwrap();
    first.train_step().unwrap();
    let ck = dir.path().join("step-2");
    first.save_checkpoint(&ck).unwrap();
    drop(first);
    let mut resumed = DdpmTrainer::resume(&ck, data.clone(), &Device::Cpu).unwrap();
    assert_eq!(resumed.step_count(), 2);
    let (l3, _) = resumed.train_step().unwrap();
    assert_eq!(snapshot(&resumed), snapshot(&straight), "weights after step 3 differ");
    assert_eq!(l3, straight.losses()[2].1);
    // EMA too: the saved models agree byte for byte.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    straight.save_model(&a).unwrap();
    resumed.save_model(&b).unwrap();
    let ema = |d: &Path| std::fs::read(d.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(ema(&a), ema(&b));

    // The checkpoint folder is a diffusers folder the evaluation side loads.
    let unet = UNet2DModel::load(&ck, &Device::Cpu).unwrap();
    assert_eq!(unet.config().num_class_embeds, Some(2));
    assert_eq!(unet.config().sample_size.map(|s| s.hw()), Some((8, 8)));
    let out = unet
        .forward(
            &Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
            &Tensor::new(&[5u32], &Device::Cpu).unwrap(),
            Some(&Tensor::new(&[1u32], &Device::Cpu).unwrap()),
        )
        .unwrap();
    assert_eq!(out.dims(), &[1, 3, 8, 8]);
    let sched = SchedulerConfig::load(&ck.join(SCHEDULER_FILE)).unwrap();
    assert_eq!(sched, SchedulerConfig::default());
    // ... with its class names, and the sampler runs it.
    let names: Vec<String> = serde_json::from_slice(&std::fs::read(ck.join("classes.json")).unwrap()).unwrap();
    assert_eq!(names, ["id_00", "id_01"]);
    let sampler =
        rcaflow::models::sampling::UnitSampler::load(&ck, rcaflow::models::schedulers::SchedulerKind::Ddim, Some(2), 0.0, &Device::Cpu)
            .unwrap();
    let unit = rcaflow::runtime::plan::Plan::new(0, &[1, 1], 1).units[1];
    assert!(sampler.sample_unit(&unit).unwrap().iter().all(|v| v.is_finite()));

    // A checkpoint of other classes is refused by name.
    let other = synth(&dir.path().join("other"), 3, 2, 8);
    let e = DdpmTrainer::resume(&ck, other, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("trained on classes [\"id_00\", \"id_01\"]"), "{e}");
}

#[test]
fn cli_synth_prep_train_oracle_writes_weights_and_baseline_then_cas_scores_a_classifier_trained_on_generated_images() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Ran::of(rcaflow().args(args).current_dir(dir.path()));
        assert!(out.success(), "{args:?}: {}", out.stderr);
        out.stdout
    };
    run(&["synth", "--out", "raw", "--classes", "2", "--per-class", "5", "--size", "32", "--seed", "2"]);
    run(&["prep", "--input", "raw", "--out", "data", "--size", "32", "--eval-fraction", "0.4"]);
    let s = run(&[
        "train",
        "oracle",
        "--data",
        "data",
        "--arch",
        "resnet18",
        "--stem",
        "imagenet",
        "--width",
        "8",
        "--out",
        "o/oracle.safetensors",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--metrics-addr",
        "off",
    ]);
    assert!(s.contains("epoch   1/1"), "{s}");
    let b = rcaflow::report::baseline::Baseline::read(&dir.path().join("o/oracle.baseline.json")).unwrap();
    assert_eq!(b.classes, vec!["id_00", "id_01"]);
    assert_eq!(b.real.total, 4);

    // CAS: the same recipe on "generated" images (another synthetic draw of the same classes),
    // tested on the eval split next to the oracle just trained.
    run(&["synth", "--out", "gen", "--classes", "2", "--per-class", "4", "--size", "32", "--seed", "7"]);
    let cas_args = |generated: &str, out: &str| -> Vec<String> {
        let args = ["cas", "--generated", generated, "--real-eval", "data/eval", "--oracle", "o/oracle.safetensors", "--out", out];
        let recipe =
            ["--arch", "resnet18", "--stem", "imagenet", "--width", "8", "--epochs", "1", "--batch-size", "3", "--metrics-addr", "off"];
        args.iter().chain(&recipe).map(|s| s.to_string()).collect()
    };
    let s = run(&cas_args("gen", "cas").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(s.contains("epoch   1/1") && s.contains("cas: accuracy "), "{s}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("cas/cas.json")).unwrap()).unwrap();
    assert_eq!(r["schema"], "rcaflow-cas/1");
    assert_eq!((r["generated"]["images"].as_u64(), r["generated"]["per_class"].clone()), (Some(8), serde_json::json!([4, 4])));
    let eval_images = r["real_eval"]["images"].as_u64().unwrap();
    assert_eq!(eval_images, 4);
    let figures = |s: &serde_json::Value| -> (f64, Vec<f64>) {
        let confusion: Vec<Vec<u64>> = serde_json::from_value(s["confusion"].clone()).unwrap();
        let total: u64 = confusion.iter().flatten().sum();
        assert_eq!((total, s["total"].as_u64()), (eval_images, Some(eval_images)), "every eval image once: {s}");
        let rows: Vec<u64> = confusion.iter().map(|r| r.iter().sum()).collect();
        assert_eq!(serde_json::json!(rows), r["real_eval"]["per_class"], "rows = true class");
        let recall: Vec<f64> = serde_json::from_value(s["recall"].clone()).unwrap();
        for (c, row) in confusion.iter().enumerate() {
            assert_eq!(recall[c], row[c] as f64 / rows[c] as f64, "recall = diagonal / row sum, class {c}");
        }
        let accuracy = s["accuracy"].as_f64().unwrap();
        assert_eq!(accuracy, (0..confusion.len()).map(|c| confusion[c][c]).sum::<u64>() as f64 / total as f64);
        (accuracy, recall)
    };
    let (cas, cas_recall) = figures(&r["cas"]);
    let (real, real_recall) = figures(&r["real_oracle"]["summary"]);
    // The real-trained figures are the oracle's baseline: the same evaluation path.
    assert_eq!(r["real_oracle"]["summary"], serde_json::to_value(&b.real).unwrap());
    assert_eq!(r["ratio"].as_f64(), (real > 0.0).then(|| cas / real), "ratio = CAS accuracy / real-trained accuracy");
    for c in 0..2 {
        let expected = (real_recall[c] > 0.0).then(|| cas_recall[c] / real_recall[c]);
        assert_eq!(r["class_ratio"][c].as_f64(), expected, "class {c}");
    }
    let png = std::fs::read(dir.path().join("cas/cas_confusion.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "cas_confusion.png is a PNG");
    let md = std::fs::read_to_string(dir.path().join("cas/cas.md")).unwrap();
    assert!(md.contains("| CAS ratio (CAS / real) |") && md.contains("| id_01 | 4 | 2 |"), "{md}");
    // Bad input: generated classes that are not the real ones, one line naming both.
    run(&["synth", "--out", "gen3", "--classes", "3", "--per-class", "2", "--size", "32"]);
    let out = Ran::of(rcaflow().args(cas_args("gen3", "cas3")).current_dir(dir.path()));
    assert_eq!(out.code(), Some(2));
    assert_eq!(
        out.stderr.trim(),
        "error: --generated gen3: classes [\"id_00\", \"id_01\", \"id_02\"] differ from --real-eval's [\"id_00\", \"id_01\"] (expected the same class folders)"
    );
    assert!(!dir.path().join("cas3").exists(), "nothing written on bad input");
    // Bad input: one line naming the flag.
    let out = Ran::of(
        rcaflow()
            .args(["train", "oracle", "--data", "nowhere", "--arch", "resnet18", "--stem", "cifar", "--out", "x.safetensors"])
            .current_dir(dir.path()),
    );
    assert_eq!(out.code(), Some(2));
    assert_eq!(out.stderr.trim(), "error: --data nowhere: no train/ folder (expected the layout `rcaflow prep` writes)");
}

#[test]
fn cli_train_ddpm_checkpoints_resumes_and_draws_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    let rcaflow = |args: &[&str]| Ran::of(rcaflow().args(args).current_dir(dir.path()));
    let ok = |args: &[&str]| {
        let out = rcaflow(args);
        assert!(out.success(), "{args:?}: {}", out.stderr);
        out.stdout
    };
    ok(&["synth", "--out", "data/train", "--classes", "2", "--per-class", "3", "--size", "8"]);
    std::fs::write(dir.path().join("unet.json"), tiny_unet(2).to_json_string()).unwrap();
    let common = ["train", "ddpm", "--data", "data", "--out", "m", "--batch-size", "2", "--checkpoint-every", "1", "--metrics-addr", "off"];
    let err = rcaflow(&[&common[..], &["--steps", "2"]].concat());
    assert_eq!(err.code(), Some(2));
    assert_eq!(err.stderr.trim(), "error: --unet-config UNET_CONFIG.json is required (unless --resume)");
    let err = rcaflow(&[&common[..], &["--steps", "2", "--resume"]].concat());
    assert!(err.stderr.contains("--resume: no checkpoint in"), "{}", err.stderr);
    let s = ok(&[&common[..], &["--steps", "2", "--unet-config", "unet.json"]].concat());
    assert!(s.contains("step       2  mean loss"), "{s}");
    let again = rcaflow(&[&common[..], &["--steps", "2", "--unet-config", "unet.json"]].concat());
    assert!(again.stderr.contains("holds checkpoints already; add --resume"));
    ok(&[&common[..], &["--steps", "3", "--resume"]].concat());
    let m = dir.path().join("m");
    let ckpts: Vec<String> =
        std::fs::read_dir(m.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut ckpts = ckpts;
    ckpts.sort();
    assert_eq!(ckpts, vec!["step-00000002", "step-00000003"], "the newest two are kept");
    assert_eq!(std::fs::read_to_string(m.join("loss.csv")).unwrap().lines().count(), 4, "header and three steps");
    assert!(m.join("loss.png").exists());
    UNet2DModel::load(&m, &Device::Cpu).unwrap();
}
