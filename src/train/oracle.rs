//! Training the oracle classifier: a torchvision ResNet-18/34 on the train split, scored on the
//! eval split after every epoch.
//!
//! Recipe (the paper's, in torchvision terms): AdamW; from scratch, `epochs` epochs of full
//! training; with a pretrained `init`, first `warmup_epochs` epochs with the backbone frozen (in
//! eval mode, so its BatchNorm statistics stay as pretrained, and only `fc` trained), then
//! `epochs` epochs of full fine-tuning with a fresh optimiser. Augmentation: random crop with
//! padding 4 and horizontal flip ([`super::dataset::crop_flip`]). Batches come from a
//! permutation per epoch keyed by (seed, epoch); the last partial batch is kept unless it has a
//! single image (BatchNorm cannot train on one value per channel).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use super::dataset::Dataset;
use super::optim::{AdamW, ParamsAdamW};
use crate::data::rng::Rng;
use crate::models::preprocess::Normalization;
use crate::models::resnet::{BnMode, ResNetConfig};
use crate::models::weights::WeightMap;
use crate::train::resnet::TrainableResNet;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("train: {0}")]
    Input(String),
    #[error("train: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Debug, Clone)]
pub struct OracleTrainConfig {
    pub resnet: ResNetConfig,
    pub norm: Normalization,
    pub warmup_epochs: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub seed: u64,
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    /// "warmup" (frozen backbone) or "train".
    pub phase: &'static str,
    /// 1-based over both phases.
    pub epoch: usize,
    pub loss: f64,
    pub train_accuracy: f64,
    pub eval_accuracy: Option<f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Mean cross-entropy of `logits` `[N, K]` against `labels` `[N]` (u32), and the number of
/// correct argmax predictions.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<(Tensor, usize)> {
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let pred = logits.argmax(D::Minus1)?;
    let correct = pred.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    Ok((loss, correct))
}

/// Accuracy of `net` (eval mode) on `data`.
pub fn accuracy(net: &TrainableResNet, data: &Dataset, norm: &Normalization, batch: usize, device: &Device) -> Result<f64, TrainError> {
    let mut correct = 0;
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (px, labels) = data.batch(chunk, None);
        let x = norm.to_input(&Tensor::from_vec(px, (chunk.len(), 3, data.height, data.width), device)?)?;
        let y = Tensor::from_vec(labels, chunk.len(), device)?;
        correct += cross_entropy(&net.forward(&x, BnMode::Eval)?, &y)?.1;
    }
    Ok(correct as f64 / data.len().max(1) as f64)
}

/// Trains an oracle; `on_batch(done, total)` after every batch of an epoch, `on_epoch` after
/// every epoch. Returns the network and the per-epoch figures.
pub fn train_oracle(
    train: &Dataset,
    eval: Option<&Dataset>,
    cfg: &OracleTrainConfig,
    init: Option<&WeightMap>,
    device: &Device,
    mut on_batch: impl FnMut(usize, usize),
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<(TrainableResNet, Vec<EpochReport>), TrainError> {
    if cfg.batch_size < 2 {
        return Err(TrainError::Input(format!(
            "--batch-size {}: expected at least 2 (batch norm trains on batch statistics)",
            cfg.batch_size
        )));
    }
    if train.classes.len() != cfg.resnet.num_classes {
        return Err(TrainError::Input(format!("{} classes in the data, the network has {}", train.classes.len(), cfg.resnet.num_classes)));
    }
    if init.is_none() && cfg.warmup_epochs > 0 {
        return Err(TrainError::Input("--warmup-epochs needs --init: a frozen backbone is only useful when it is pretrained".into()));
    }
    if train.len() < 2 {
        return Err(TrainError::Input(format!("{} training image(s): expected at least 2", train.len())));
    }
    let net = TrainableResNet::new(&cfg.resnet, cfg.seed, device)?;
    if let Some(w) = init {
        let fc_loaded = net.load_pretrained(w).map_err(|e| TrainError::Input(e.to_string()))?;
        if !fc_loaded {
            tracing::info!("--init: fc has another class count; it starts from a fresh init");
        }
    }
    let params = ParamsAdamW { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() };
    let mut reports = Vec::new();
    let total_epochs = cfg.warmup_epochs + cfg.epochs;
    let mut opt = AdamW::new(net.fc_vars(), params.clone())?;
    for epoch in 0..total_epochs {
        let warmup = epoch < cfg.warmup_epochs;
        if epoch == cfg.warmup_epochs {
            // Full fine-tuning starts with fresh moments over every parameter.
            opt = AdamW::new(net.trainable_vars(), params.clone())?;
        }
        let start = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::keyed(&[cfg.seed, 1, epoch as u64]).shuffle(&mut order);
        let mut aug = Rng::keyed(&[cfg.seed, 2, epoch as u64]);
        let batches: Vec<&[usize]> = order.chunks(cfg.batch_size).filter(|b| b.len() > 1).collect();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (bi, chunk) in batches.iter().enumerate() {
            let (px, labels) = train.batch(chunk, Some(&mut aug));
            let x = cfg.norm.to_input(&Tensor::from_vec(px, (chunk.len(), 3, train.height, train.width), device)?)?;
            let y = Tensor::from_vec(labels, chunk.len(), device)?;
            let logits = if warmup { net.head(&net.features(&x, BnMode::Eval)?.detach())? } else { net.forward(&x, BnMode::Train)? };
            let (loss, ok) = cross_entropy(&logits, &y)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            correct += ok;
            seen += chunk.len();
            on_batch(bi + 1, batches.len());
        }
        let seconds = start.elapsed().as_secs_f64();
        let eval_accuracy = match eval {
            Some(e) => Some(accuracy(&net, e, &cfg.norm, cfg.batch_size, device)?),
            None => None,
        };
        let report = EpochReport {
            phase: if warmup { "warmup" } else { "train" },
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            eval_accuracy,
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok((net, reports))
}
