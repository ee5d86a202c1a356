//! The `corekv` binary: parses the command line and runs the node wiring.
//! Exit codes: 0 after a clean shutdown, 1 when start-up fails, 2 for bad
//! command-line usage.

use corekv::cli::{self, Command};

fn main() {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help(text)) => print!("{text}"),
        Ok(Command::Reshard(opts)) => {
            if let Err(e) = corekv::reshard::run(&opts) {
                eprintln!("corekv reshard: {e}");
                std::process::exit(1);
            }
        }
        Ok(Command::Version) => println!("corekv {}", env!("CARGO_PKG_VERSION")),
        Ok(Command::Run(opts)) => {
            if let Err(e) = corekv::node::run(&opts) {
                eprintln!("corekv: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("corekv: {e}");
            std::process::exit(2);
        }
    }
}
