//! The `rcaflow` binary: parse flags, set up logging, run the command, map errors to exit codes.

use std::io::IsTerminal;

use clap::Parser;
use rcaflow::cli::{dispatch, load_settings, Cli};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let code = match load_settings(&cli.config, &cli.log_level) {
        Ok(settings) => {
            let filter = match &cli.log_level {
                Some(level) => EnvFilter::try_new(level),
                None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.log.level)),
            };
            match filter {
                Ok(filter) => {
                    tracing_subscriber::fmt()
                        .with_env_filter(filter)
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::stderr().is_terminal())
                        .init();
                    match dispatch(cli, settings) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("error: {e}");
                            e.exit_code()
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: log level: {e}");
                    2
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
