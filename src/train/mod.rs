//! Training the protocol's two models: the ResNet oracle ([`oracle`]) and the class-conditional
//! DDPM ([`ddpm`]), with the pieces they share: in-memory datasets and augmentation
//! ([`dataset`]), seeded initialisation ([`init`]), AdamW, gradient clipping and EMA
//! ([`optim`]), and the oracle ResNet over trainable variables ([`resnet`]). Pure training loops; the CLI (src/cli/train.rs) adds progress and metrics.

pub mod dataset;
pub mod ddpm;
pub mod init;
pub mod optim;
pub mod oracle;
pub mod resnet;
