//! Stand-in for `flashmoe sim` until the CLI mounts it:
//! `cargo run -p flashmoe-sim --release --example sim -- --reproduce`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "sim", about = "flashmoe's SSD simulation harness")]
struct Cli {
    #[command(flatten)]
    sim: flashmoe_sim::cli::SimArgs,
}

fn main() {
    let cli = Cli::parse();
    match flashmoe_sim::cli::run(&cli.sim) {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
