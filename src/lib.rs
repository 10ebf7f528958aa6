//! rcaflow: streaming evaluation of class-conditional image generators.
//!
//! A tour of the modules, in the order a run goes through them:
//! - [`files`] and [`fault`]: bottom modules every writing layer uses: the one atomic writer
//!   (exclusive temporaries, every I/O error surfaced), class-name checks, PNG encoding in
//!   memory; and the fault points the crash tests break things at.
//! - [`limits`]: range checks for durations, batch and unit sizes (one place for the bounds).
//! - [`units`]: the bottom vocabulary every layer shares: origins, unit ids and spans, work
//!   units, unit seeds and the rule that cuts a class into units.
//! - [`topology`]: the topology file (TOML) → a validated [`topology::Graph`]; every error names
//!   its component.
//! - [`stages`]: one home per component type (its config, checks, files, build step and run
//!   loop) and the registration list that generates the closed topology enum; [`stages::build`]
//!   loads every component's weights and files before the run, every error at once.
//! - [`runtime`]: the running dataflow: one ractor actor per stage, each owning the thread that
//!   does its work; bounded crossbeam channels between stages (backpressure); exactly-once
//!   accumulation by unit id and the one driver of accumulating sinks; binary checkpoints and
//!   the run directory and its lock; graceful shutdown with a deadline.
//! - [`models`]: candle models loaded from the weight files users already have (ResNet oracle,
//!   InceptionV3, LPIPS, the diffusers UNet and its schedulers), and device strings.
//! - [`metrics`]: pure maths (confusion matrices, RCA, Wilson intervals), tested without threads.
//! - [`data`]: image folders (list, decode, write PNG), `.npz` statistics, the synthetic
//!   identity set (`synth`) and raw photo preparation (`prep`, with MTCNN face crops: `faces`,
//!   `face_drawing`).
//! - [`report`]: the result types stages hand to it, `report.json`, `report.md`, PNG figures
//!   and baseline files.
//! - [`telemetry`]: every Prometheus metric name, and the exporter (its HTTP endpoint counts
//!   the scrapes it serves, so a run can wait for the one that carries its final values).
//! - [`settings`]: deployment settings (config/rcaflow.toml).
//! - [`train`]: training the oracle and the DDPM (AdamW, EMA, checkpoints, the trainable ResNet).
//! - [`bench`]: `rcaflow bench`'s per-model measuring (random-weight models, repeats,
//!   statistics); `--pipeline`, which runs whole topologies, is in `cli::bench`.
//! - [`cli`]: the subcommands.
pub mod bench;
pub mod cli;
pub mod data;
pub mod fault;
pub mod files;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod report;
pub mod runtime;
pub mod settings;
pub mod stages;
pub mod telemetry;
pub mod topology;
pub mod train;
pub mod units;
