//! payrecon's entry point: parse the command line, hand it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    payrecon::cli::main(payrecon::cli::Cli::parse())
}
