//! One file per stage type; [`build`] turns a validated component into its running stage.

pub mod batcher;
pub mod ddpm_sampler;
pub mod fid;
pub mod fid_stats;
pub mod image_folder;
pub mod inception;
pub mod inception_score;
pub mod lpips_diversity;
pub mod oracle;
pub mod rca;
pub mod report;
pub mod save_images;

use crate::runtime::stage::{Restart, Stage};
use crate::runtime::StageSpec;
use crate::topology::{ComponentKind, Graph};

/// Whether a component's stage keeps a checkpoint of the units it holds: the accumulators,
/// and `save_images` (so a resumed run knows which PNGs are written).
pub fn holds_units(kind: &ComponentKind) -> bool {
    accumulates(kind) || matches!(kind, ComponentKind::SaveImages(_))
}

/// Whether a component folds units into results (what run progress counts).
pub fn accumulates(kind: &ComponentKind) -> bool {
    matches!(kind, ComponentKind::Rca(_) | ComponentKind::Fid(_) | ComponentKind::InceptionScore(_) | ComponentKind::LpipsDiversity(_))
}

/// The stages of a validated graph, in data-flow order.
pub fn build(graph: &Graph) -> Vec<StageSpec> {
    graph
        .components
        .iter()
        .map(|c| {
            let restart = (c.restart > 0).then(|| {
                let (kind, label) = (c.kind.clone(), graph.label.clone());
                Restart { max: c.restart, rebuild: Box::new(move || make(&kind, &label)) }
            });
            StageSpec {
                id: c.id.clone(),
                qualified: c.qualified(),
                accumulates: accumulates(&c.kind),
                stage: make(&c.kind, &graph.label),
                restart,
            }
        })
        .collect()
}

/// A fresh stage for a component.
fn make(kind: &ComponentKind, label: &str) -> Box<dyn Stage> {
    match kind {
        ComponentKind::ImageFolder(cfg) => Box::new(image_folder::ImageFolderStage::new(cfg.clone())),
        ComponentKind::Batcher(cfg) => Box::new(batcher::BatcherStage::new(cfg.batch_size)),
        ComponentKind::OracleClassifier(cfg) => Box::new(oracle::OracleStage::new(cfg.clone())),
        ComponentKind::InceptionV3(cfg) => Box::new(inception::InceptionStage::new(cfg.clone())),
        ComponentKind::Rca(cfg) => Box::new(rca::RcaStage::new(cfg.clone())),
        ComponentKind::Fid(cfg) => Box::new(fid::FidStage::new(cfg.clone())),
        ComponentKind::InceptionScore(cfg) => Box::new(inception_score::InceptionScoreStage::new(cfg.clone())),
        ComponentKind::LpipsDiversity(cfg) => Box::new(lpips_diversity::LpipsDiversityStage::new(cfg.clone())),
        ComponentKind::SaveImages(cfg) => Box::new(save_images::SaveImagesStage::new(cfg.clone())),
        ComponentKind::DdpmSampler(cfg) => Box::new(ddpm_sampler::DdpmSamplerStage::new(cfg.clone())),
        ComponentKind::Report(cfg) => Box::new(report::ReportStage::new(cfg.clone(), label.to_string())),
    }
}
