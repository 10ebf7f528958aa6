//! `rcaflow validate --topology FILE`: checks a topology and prints its graph. Loads no model.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::stages::Graph;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[arg(long, value_name = "FILE")]
    pub topology: PathBuf,
}

pub fn validate(args: ValidateArgs) -> Result<(), CliError> {
    let graph = Graph::load(&args.topology)?;
    print!("{graph}");
    println!("ok");
    Ok(())
}
