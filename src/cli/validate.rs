//! `rcaflow validate --topology FILE [--set KEY=VALUE]...`: checks a topology and prints its graph. Loads no model.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::stages::Graph;
use crate::topology::Override;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[arg(long, value_name = "FILE")]
    pub topology: PathBuf,
    /// Change one key of the topology file, as `rcaflow run --set` does (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<Override>,
}

pub fn validate(args: ValidateArgs) -> Result<(), CliError> {
    let graph = Graph::load_with(&args.topology, &args.set)?;
    print!("{graph}");
    println!("ok");
    Ok(())
}
