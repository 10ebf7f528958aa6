//! Writes the example set `rcaflow eval` and `topology/eval-folders.toml` run on:
//! `cargo run --release --example make_example [-- OUT_DIR [PER_CLASS]]` (default `example`, 100).
//! See `examples/common/color_set.rs` for what it contains and how the oracle is built.

#[path = "common/color_set.rs"]
mod color_set;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "example".into()));
    let per_class: usize = match args.next().map(|s| s.parse()) {
        None => 100,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("error: PER_CLASS must be a positive integer");
            std::process::exit(2);
        }
    };
    color_set::make_example(&out, per_class, 32, 2026);
    println!(
        "wrote {}: real/ and generated/ ({} classes x {per_class} images, 32x32) and oracle.safetensors",
        out.display(),
        color_set::PALETTE.len()
    );
}
