//! The `corekv` binary: parses the command line and runs the node wiring.
//! Exit codes: 0 after a clean shutdown, 1 when start-up fails, 2 for bad
//! command-line usage.

use corekv::cli::{self, Command, USAGE};

fn main() {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => print!("{USAGE}"),
        Ok(Command::Version) => println!("corekv {}", env!("CARGO_PKG_VERSION")),
        Ok(Command::Run(opts)) => {
            if let Err(e) = corekv::node::run(&opts) {
                eprintln!("corekv: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("corekv: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}
