//! `report.md`: the same numbers as `report.json`, as tables a person reads.

use std::fmt::Write;

use super::json::{Report, RunStatus};
use super::results::EarlyStopResult;
use crate::metrics::rca::Interval;

fn num(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.4}"))
}

fn ci(v: &Option<Interval>) -> String {
    v.as_ref().map_or("n/a".to_string(), |i| format!("[{:.4}, {:.4}]", i.low, i.high))
}

/// The per-class table of FID, KID and precision/recall (columns of the sinks that ran with
/// `per_class`), beside class RCA when the rca sink ran.
fn per_class_quality(md: &mut String, r: &Report) {
    let fid = r.fid.as_ref().and_then(|f| f.per_class.as_ref());
    let rank_deficient = r.fid.as_ref().and_then(|f| f.per_class_rank_deficient.as_ref());
    let kid = r.kid.as_ref().and_then(|k| k.per_class.as_ref());
    let prc = r.precision_recall.as_ref().and_then(|p| p.per_class.as_ref());
    if fid.is_none() && kid.is_none() && prc.is_none() {
        return;
    }
    let _ = writeln!(md, "### Per class (generated class c against real class c)\n");
    let mut header = vec!["class"];
    if r.rca.is_some() {
        header.push("class RCA");
    }
    if fid.is_some() {
        header.push("per-class FID");
    }
    if kid.is_some() {
        header.extend(["KID", "KID std"]);
    }
    if prc.is_some() {
        header.extend(["precision", "recall", "density", "coverage"]);
    }
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(header.len() - 1));
    for (c, class) in r.classes.iter().enumerate() {
        let mut cells = vec![class.clone()];
        if let Some(rca) = &r.rca {
            cells.push(num(rca.per_class.get(c).copied().flatten()));
        }
        if let Some(f) = fid {
            let flag = rank_deficient.and_then(|v| v.get(c)).copied().unwrap_or(false);
            cells.push(format!("{}{}", num(f.get(c).copied().flatten()), if flag { " (rank-deficient)" } else { "" }));
        }
        if let Some(k) = kid {
            let v = k.get(c).copied().flatten();
            cells.extend([num(v.map(|v| v.mean)), num(v.map(|v| v.std))]);
        }
        if let Some(p) = prc {
            let v = p.get(c).copied().flatten();
            cells.extend([num(v.map(|v| v.precision)), num(v.map(|v| v.recall)), num(v.map(|v| v.density)), num(v.map(|v| v.coverage))]);
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    let means: Vec<String> = [
        ("per-class FID", r.fid.as_ref().and_then(|f| f.per_class_mean)),
        ("per-class KID", r.kid.as_ref().and_then(|k| k.per_class_mean)),
    ]
    .iter()
    .filter(|(_, v)| v.is_some())
    .map(|(name, v)| format!("mean {name} = {}", num(*v)))
    .collect();
    if !means.is_empty() {
        let _ = writeln!(md, "\n{}.", means.join("; "));
    }
    let _ = writeln!(
        md,
        "\nn/a where a class has too few images on a side (FID, KID: 2; precision/recall: k + 1). Rank-deficient: a side of the class has no more images than feature dimensions (2048), so its FID is biased upwards; compare like with like.\n"
    );
}

/// Renders the report as Markdown.
/// Why and where sampling stopped early, and what each class used.
fn early_stop(md: &mut String, r: &Report, stop: &EarlyStopResult) {
    let _ = writeln!(md, "## Early stop\n");
    let _ = writeln!(
        md,
        "Sampling stopped after unit `{}` ({} units, {} of {} planned images): every class's generated-recall Wilson 95% interval had a half-width of at most {} with at least {} images.\n",
        stop.last_unit, stop.units_used, stop.images_used, stop.images_planned, stop.ci_half_width, stop.min_per_class
    );
    let _ = writeln!(md, "| class | images used | planned | generated recall | 95% CI (Wilson) | half-width |");
    let _ = writeln!(md, "|---|---:|---:|---:|---|---:|");
    for (class, c) in r.classes.iter().zip(&stop.per_class) {
        let _ = writeln!(
            md,
            "| {class} | {} | {} | {} | {} | {:.4} |",
            c.images,
            c.planned,
            num(Some(c.recall)),
            ci(&Some(c.ci95)),
            c.half_width
        );
    }
    let _ = writeln!(md);
}

pub fn render(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# rcaflow report\n");
    let status = match r.status {
        RunStatus::Complete => "complete",
        RunStatus::Interrupted => "**interrupted**: the numbers cover only the images evaluated before the stop",
        RunStatus::Partial => {
            "**partial**: merged from shards that had not all finished; the numbers cover only the units they had done (see merge.json)"
        }
    };
    let _ = writeln!(md, "- status: {status}");
    let _ = writeln!(md, "- topology: `{}`", r.topology);
    let _ = writeln!(md, "- classes ({}): {}", r.classes.len(), r.classes.join(", "));
    let _ = writeln!(md, "- wall time: {:.2} s", r.timing.wall_seconds);
    if let Some(g) = r.timing.generation_seconds {
        // Generation and evaluation overlap when their sum exceeds the wall time.
        let _ = writeln!(
            md,
            "- generation: {g:.2} s; evaluation busy time: {:.2} s (overlapping: the run took {:.2} s)",
            r.timing.evaluation_seconds, r.timing.wall_seconds
        );
    }
    let _ = writeln!(md, "- rcaflow {} (report schema {})\n", r.rcaflow_version, r.schema_version);
    if let Some(stop) = &r.early_stop {
        early_stop(&mut md, r, stop);
    }

    if let (Some(real), Some(generated), Some(rca)) = (&r.real, &r.generated, &r.rca) {
        let _ = writeln!(md, "## Relative Classification Accuracy\n");
        let _ = writeln!(md, "**RCA (global) = {}** (generated accuracy / real accuracy)\n", num(rca.global));
        let _ = writeln!(md, "| images | accuracy | 95% CI (Wilson) | count |");
        let _ = writeln!(md, "|---|---:|---|---:|");
        for (name, s) in [("real", real), ("generated", generated)] {
            let _ = writeln!(md, "| {name} | {} | {} | {} |", num(s.accuracy), ci(&s.accuracy_ci95), s.total);
        }
        if let Some(source) = &r.real_source {
            let _ = writeln!(md, "\nReal accuracy from: {source}.");
        }
        let _ = writeln!(md, "\n## Per class\n");
        let _ = writeln!(md, "| class | class RCA | real recall | generated recall | generated 95% CI | real precision | generated precision | real F1 | generated F1 | real support | generated support |");
        let _ = writeln!(md, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
        for (c, class) in r.classes.iter().enumerate() {
            let get = |v: &[f64]| v.get(c).copied();
            let _ = writeln!(
                md,
                "| {class} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                num(rca.per_class.get(c).copied().flatten()),
                num(get(&real.recall)),
                num(get(&generated.recall)),
                ci(generated.recall_ci95.get(c).unwrap_or(&None)),
                num(get(&real.precision)),
                num(get(&generated.precision)),
                num(get(&real.f1)),
                num(get(&generated.f1)),
                real.support.get(c).copied().unwrap_or(0),
                generated.support.get(c).copied().unwrap_or(0),
            );
        }
        let _ = writeln!(
            md,
            "\nClass RCA is n/a where the class has no real or no generated image, or the oracle never recognises its real images.\n"
        );
        for (name, s) in [("real", real), ("generated", generated)] {
            let _ = writeln!(md, "### Confusion matrix, {name} (rows: true class, columns: predicted)\n");
            let _ = writeln!(md, "| true \\ predicted | {} |", r.classes.join(" | "));
            let _ = writeln!(md, "|---|{}", "---:|".repeat(r.classes.len()));
            for (class, row) in r.classes.iter().zip(&s.confusion) {
                let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                let _ = writeln!(md, "| {class} | {} |", cells.join(" | "));
            }
            let _ = writeln!(md);
        }
    }

    if let Some(l) = &r.lpips_diversity {
        let _ = writeln!(md, "## LPIPS diversity ({})\n", l.net);
        let _ = writeln!(md, "Mean LPIPS distance between pairs of generated images of the same class (higher = more diverse); overall mean over all pairs: **{}**.\n", num(l.diversity.mean));
        let _ = writeln!(md, "| class | mean LPIPS | pairs |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (c, class) in r.classes.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {class} | {} | {} |",
                num(l.diversity.per_class.get(c).copied().flatten()),
                l.diversity.pairs_per_class.get(c).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(md);
    }
    if r.fid.is_some() || r.inception_score.is_some() || r.kid.is_some() || r.precision_recall.is_some() {
        let _ = writeln!(md, "## Visual quality\n");
        if let Some(f) = &r.fid {
            let against = f
                .reference
                .as_ref()
                .map_or(format!("{} real images", f.real_images), |p| format!("reference statistics `{}`", p.display()));
            let _ = writeln!(
                md,
                "- **FID = {}** ({} generated images against {against}; pytorch-fid conventions)",
                num(f.value),
                f.generated_images
            );
            if f.rank_deficient {
                let _ = writeln!(md, "  - fewer images than the {} feature dimensions on a side: the covariance is singular and FID is biased upwards; compare only runs of the same size", f.feature_dim);
            }
            if f.nonfinite_images > 0 {
                let _ = writeln!(md, "  - {} images with non-finite features were left out", f.nonfinite_images);
            }
        }
        if let Some(s) = &r.inception_score {
            let _ =
                writeln!(md, "- **Inception Score = {:.4} ± {:.4}** ({} splits, {} generated images)", s.mean, s.std, s.splits, s.images);
        }
        if let Some(k) = &r.kid {
            let _ = writeln!(
                md,
                "- **KID = {} ± {}** ({} subsets of {} per side, seed {}; {} generated against {} real images; torch-fidelity conventions)",
                num(k.mean),
                num(k.std),
                k.subsets,
                k.subset_size,
                k.seed,
                k.generated_images,
                k.real_images
            );
            if let Some(note) = &k.note {
                let _ = writeln!(md, "  - note: {note}");
            }
        }
        if let Some(p) = &r.precision_recall {
            let _ = writeln!(
                md,
                "- **precision = {}, recall = {}**, density = {}, coverage = {} (k = {}; {} generated against {} real images)",
                num(p.precision),
                num(p.recall),
                num(p.density),
                num(p.coverage),
                p.k,
                p.generated_images,
                p.real_images
            );
        }
        let _ = writeln!(md);
        per_class_quality(&mut md, r);
    }

    if !r.inputs.is_empty() {
        let _ = writeln!(md, "## Inputs\n");
        for (id, s) in &r.inputs {
            let files: u64 = s.files.iter().sum();
            let decoded: u64 = s.decoded.iter().sum();
            let _ = writeln!(
                md,
                "- `{id}` ({}, `{}`): {files} files, {decoded} decoded, {} unreadable{}",
                s.origin,
                s.path.display(),
                s.unreadable.len(),
                if s.stopped_early { ", stopped early" } else { "" }
            );
            for bad in &s.unreadable {
                let _ = writeln!(md, "  - `{}`: {}", bad.path.display(), bad.error);
            }
        }
        let _ = writeln!(md);
    }

    if !r.generation.is_empty() {
        let _ = writeln!(md, "## Generation\n");
        for (id, g) in &r.generation {
            let planned: u64 = g.planned.iter().sum();
            let generated: u64 = g.generated.iter().sum();
            let _ = writeln!(
                md,
                "- `{id}`: `{}`, {} with {} steps (eta {}), seed {}, {} replica(s): {generated} of {planned} images in {} units, {:.2} s ({}){}",
                g.unet.display(),
                g.scheduler,
                g.steps,
                g.eta,
                g.seed,
                g.replicas,
                g.units,
                g.generation_seconds,
                g.images_per_second.map_or("-".into(), |v| format!("{v:.2} images/s")),
                if g.stopped_early { ", stopped early" } else { "" }
            );
            if g.nonfinite_images > 0 {
                let _ = writeln!(md, "  - **{} images had NaN or infinite values** before quantisation", g.nonfinite_images);
            }
        }
        let _ = writeln!(md);
    }

    if !r.figures.is_empty() {
        let _ = writeln!(md, "## Figures\n");
        for (name, path) in &r.figures {
            let _ = writeln!(md, "![{name}]({})\n", path.display());
        }
    }

    let _ = writeln!(md, "## Stages\n");
    let _ = writeln!(md, "| stage | images in | images out | batches | busy (s) | busy ratio |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (id, t) in &r.timing.stages {
        let _ = writeln!(md, "| {id} | {} | {} | {} | {:.3} | {:.3} |", t.images_in, t.images_out, t.batches, t.busy_seconds, t.busy_ratio);
    }
    md
}
