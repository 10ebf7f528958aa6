//! Every metric rcaflow exports, in one list (as Vector keeps its internal metric names), and
//! the Prometheus exporter. Names follow `rcaflow_<what>_<unit>[_total]` with base units;
//! labels stay low-cardinality: `stage`, `edge`, `origin`, `class`, plus a global `run`.

use std::net::{SocketAddr, TcpListener};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

mod endpoint;
pub use endpoint::{ever_scraped, scrape_mark, scraped_since};

/// Images a stage received. Labels: stage.
pub const STAGE_IMAGES_IN: &str = "rcaflow_stage_images_in_total";
/// Images a stage sent downstream. Labels: stage.
pub const STAGE_IMAGES_OUT: &str = "rcaflow_stage_images_out_total";
/// Batches a stage processed. Labels: stage.
pub const STAGE_BATCHES: &str = "rcaflow_stage_batches_total";
/// Time a stage spent on one batch. Labels: stage.
pub const STAGE_BATCH_SECONDS: &str = "rcaflow_stage_batch_duration_seconds";
/// Share of its lifetime a stage spent working (not waiting on channels). Labels: stage.
pub const STAGE_BUSY_RATIO: &str = "rcaflow_stage_busy_ratio";
/// Errors a stage met (handled or fatal). Labels: stage.
pub const STAGE_ERRORS: &str = "rcaflow_stage_errors_total";
/// Input files that could not be decoded. Labels: stage.
pub const CORRUPT_INPUTS: &str = "rcaflow_corrupt_inputs_total";
/// Batches waiting in an edge's channel. Labels: edge.
pub const CHANNEL_DEPTH: &str = "rcaflow_channel_depth_batches";
/// Capacity of an edge's channel. Labels: edge.
pub const CHANNEL_CAPACITY: &str = "rcaflow_channel_capacity_batches";
/// Images the run will evaluate. Labels: origin.
pub const RUN_IMAGES_PLANNED: &str = "rcaflow_run_images_planned";
/// Images folded into results by the slowest accumulating sink, over images planned.
pub const RUN_PROGRESS: &str = "rcaflow_run_progress_ratio";
/// Live oracle accuracy. Labels: origin.
pub const ACCURACY: &str = "rcaflow_accuracy_ratio";
/// Live global Relative Classification Accuracy.
pub const RCA: &str = "rcaflow_rca_ratio";
/// Live class RCA. Labels: class.
pub const CLASS_RCA: &str = "rcaflow_class_rca_ratio";
/// Oracle predictions folded into results: the live confusion matrices. Labels: origin, class
/// (the true or intended class), predicted. At most 2 x classes² series, only cells that occur.
pub const PREDICTIONS: &str = "rcaflow_predictions_total";
/// Oracle predictions of the true or intended class (the diagonal of [`PREDICTIONS`]), so
/// that PromQL can pool the accuracies, and RCA, over the shards of a sharded run. Labels: origin.
pub const CORRECT_PREDICTIONS: &str = "rcaflow_correct_predictions_total";
/// Live FID (recomputed every `interval_secs` of the fid sink).
pub const FID: &str = "rcaflow_fid";
/// FID of one class's generated images against its real images (fid `per_class`), at the end.
pub const CLASS_FID: &str = "rcaflow_class_fid";
/// Kernel Inception Distance (mean over subsets), when the kid sink's inputs close.
pub const KID: &str = "rcaflow_kid";
/// KID of one class (kid `per_class`), at the end.
pub const CLASS_KID: &str = "rcaflow_class_kid";
/// k-NN precision of the generated images (precision_recall sink), at the end.
pub const PRECISION: &str = "rcaflow_precision_ratio";
/// k-NN recall of the real images by the generated ones, at the end.
pub const RECALL: &str = "rcaflow_recall_ratio";
/// Density (Naeem et al. 2020), at the end.
pub const DENSITY: &str = "rcaflow_density";
/// Coverage (Naeem et al. 2020), at the end.
pub const COVERAGE: &str = "rcaflow_coverage_ratio";
/// Live Inception Score (mean over splits).
pub const INCEPTION_SCORE: &str = "rcaflow_inception_score";
/// Early stop (`stop_when`): the rule's half-width, `ci_half_width`.
pub const EARLY_STOP_TARGET: &str = "rcaflow_early_stop_target_half_width";
/// Early stop: the live Wilson 95% half-width of a class's generated recall (0.5 before its
/// first image), as the deciding rca sink folds units. Labels: class.
pub const EARLY_STOP_CLASS_HALF_WIDTH: &str = "rcaflow_early_stop_class_half_width";
/// Early stop: 1 once the rule has held (sampling ends), else 0.
pub const EARLY_STOP_FIRED: &str = "rcaflow_early_stop_fired";
/// Images with NaN or infinite values: samples a sampler generated, or features and logits left
/// out of a metric. Labels: stage.
pub const NONFINITE_IMAGES: &str = "rcaflow_nonfinite_images_total";
/// Live mean LPIPS distance between same-class generated images. Labels: class.
pub const LPIPS_DIVERSITY: &str = "rcaflow_lpips_diversity";
/// Images a sampler plans per class. Labels: class.
pub const CLASS_IMAGES_PLANNED: &str = "rcaflow_class_images_planned";
/// Images a sampler has generated per class. Labels: class.
pub const CLASS_IMAGES_GENERATED: &str = "rcaflow_class_images_generated_total";
/// Work units a sampler has finished.
pub const SAMPLER_UNITS_DONE: &str = "rcaflow_sampler_units_total";
/// Seconds until the sampler finishes its plan, at the rate so far.
pub const RUN_ETA: &str = "rcaflow_run_eta_seconds";
/// Image batches alive in the process (channels plus stages' hands): the memory bound.
pub const IMAGE_BATCHES_LIVE: &str = "rcaflow_image_batches_live";

/// Mean training loss of the last epoch (oracle) or the last logged step (ddpm). Labels: model.
pub const TRAIN_LOSS: &str = "rcaflow_train_loss";
/// Oracle accuracy during training. Labels: split (train, eval).
pub const TRAIN_ACCURACY: &str = "rcaflow_train_accuracy_ratio";
/// Epochs finished. Labels: model.
pub const TRAIN_EPOCH: &str = "rcaflow_train_epoch";
/// Optimisation steps taken. Labels: model.
pub const TRAIN_STEP: &str = "rcaflow_train_step";
/// Global gradient norm before clipping (ddpm). Labels: model.
pub const TRAIN_GRAD_NORM: &str = "rcaflow_train_grad_norm";

/// Latency buckets in seconds: from a fast CPU batch to a slow 1,000-step sampler batch.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics address {addr}: cannot listen: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("metrics exporter: {0}")]
    Exporter(String),
}

/// Starts the Prometheus exporter on `addr` (port 0 picks a free port) with a global `run`
/// label, and a global `shard` label (the shard index, `0` to `N-1`: N series per metric at
/// most) for one shard of a sharded run; returns the address it listens on.
pub fn install_exporter(addr: SocketAddr, run: &str, shard: Option<u32>) -> Result<SocketAddr, TelemetryError> {
    // Bound here, and kept: an address in use is reported clearly, and a port-0 request says
    // which port it got (tests run many exporters side by side).
    let listener = TcpListener::bind(addr).map_err(|source| TelemetryError::Bind { addr: addr.to_string(), source })?;
    let bound = listener.local_addr().map_err(|source| TelemetryError::Bind { addr: addr.to_string(), source })?;
    let mut builder = PrometheusBuilder::new().add_global_label("run", run);
    if let Some(shard) = shard {
        builder = builder.add_global_label("shard", shard.to_string());
    }
    let handle = builder
        .set_buckets_for_metric(Matcher::Full(STAGE_BATCH_SECONDS.to_string()), LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    endpoint::serve(listener, handle).map_err(|e| TelemetryError::Exporter(format!("cannot start the endpoint's threads: {e}")))?;
    describe_all();
    Ok(bound)
}

/// HELP lines and units for every metric above.
fn describe_all() {
    describe_counter!(STAGE_IMAGES_IN, Unit::Count, "Images a stage received.");
    describe_counter!(STAGE_IMAGES_OUT, Unit::Count, "Images a stage sent downstream.");
    describe_counter!(STAGE_BATCHES, Unit::Count, "Batches a stage processed.");
    describe_histogram!(STAGE_BATCH_SECONDS, Unit::Seconds, "Time a stage spent processing one batch.");
    describe_gauge!(STAGE_BUSY_RATIO, Unit::Percent, "Share of a stage's lifetime spent working rather than waiting (0-1).");
    describe_counter!(STAGE_ERRORS, Unit::Count, "Errors a stage met, handled or fatal.");
    describe_counter!(CORRUPT_INPUTS, Unit::Count, "Input image files that could not be decoded.");
    describe_gauge!(CHANNEL_DEPTH, Unit::Count, "Batches waiting in an edge's channel.");
    describe_gauge!(CHANNEL_CAPACITY, Unit::Count, "Capacity of an edge's channel, in batches.");
    describe_gauge!(RUN_IMAGES_PLANNED, Unit::Count, "Images the run will evaluate, by origin.");
    describe_gauge!(RUN_PROGRESS, Unit::Percent, "Images folded into results over images planned (0-1).");
    describe_gauge!(ACCURACY, Unit::Percent, "Live oracle accuracy by origin (0-1).");
    describe_gauge!(RCA, Unit::Percent, "Live global Relative Classification Accuracy (generated / real accuracy).");
    describe_gauge!(CLASS_RCA, Unit::Percent, "Live class RCA (generated / real recall).");
    describe_counter!(
        PREDICTIONS,
        Unit::Count,
        "Oracle predictions folded into results, by origin, true (intended) class and predicted class."
    );
    describe_counter!(
        CORRECT_PREDICTIONS,
        Unit::Count,
        "Oracle predictions of the true or intended class, by origin (the confusion matrices' diagonal)."
    );
    describe_gauge!(FID, "Live Frechet Inception Distance, generated vs real.");
    describe_gauge!(CLASS_FID, "FID of a class's generated images against its real images.");
    describe_gauge!(KID, "Kernel Inception Distance, generated vs real (mean over subsets).");
    describe_gauge!(CLASS_KID, "KID of a class's generated images against its real images.");
    describe_gauge!(PRECISION, Unit::Percent, "k-NN precision: share of generated images inside the real manifold (0-1).");
    describe_gauge!(RECALL, Unit::Percent, "k-NN recall: share of real images inside the generated manifold (0-1).");
    describe_gauge!(DENSITY, "Density (Naeem et al. 2020): mean real-neighbourhood count of generated images over k.");
    describe_gauge!(
        COVERAGE,
        Unit::Percent,
        "Coverage (Naeem et al. 2020): share of real images with a generated image in their k-NN ball (0-1)."
    );
    describe_gauge!(INCEPTION_SCORE, "Live Inception Score of the generated images (mean over splits).");
    describe_gauge!(EARLY_STOP_TARGET, "Early stop: the stop_when half-width every class's generated-recall interval must reach.");
    describe_gauge!(EARLY_STOP_CLASS_HALF_WIDTH, "Early stop: live Wilson 95% half-width of a class's generated recall.");
    describe_gauge!(EARLY_STOP_FIRED, "Early stop: 1 once the stop_when rule has held and sampling ends, else 0.");
    describe_counter!(
        NONFINITE_IMAGES,
        Unit::Count,
        "Images with NaN or infinite values: generated samples, or features left out of a metric."
    );
    describe_gauge!(LPIPS_DIVERSITY, "Live mean LPIPS distance between pairs of same-class generated images.");
    describe_gauge!(CLASS_IMAGES_PLANNED, Unit::Count, "Images the sampler plans for a class.");
    describe_counter!(CLASS_IMAGES_GENERATED, Unit::Count, "Images the sampler has generated for a class.");
    describe_counter!(SAMPLER_UNITS_DONE, Unit::Count, "Work units the sampler has finished.");
    describe_gauge!(RUN_ETA, Unit::Seconds, "Seconds until the sampler finishes its plan, at its rate so far.");
    describe_gauge!(IMAGE_BATCHES_LIVE, Unit::Count, "Image batches alive in the process.");
    describe_gauge!(TRAIN_LOSS, "Training loss: last epoch mean (oracle) or last logged step (ddpm).");
    describe_gauge!(TRAIN_ACCURACY, Unit::Percent, "Oracle accuracy during training, by split (0-1).");
    describe_gauge!(TRAIN_EPOCH, Unit::Count, "Training epochs finished.");
    describe_gauge!(TRAIN_STEP, Unit::Count, "Optimisation steps taken.");
    describe_gauge!(TRAIN_GRAD_NORM, "Global gradient L2 norm before clipping.");
}
