//! payrecon's entry point: parse the command line, hand it to the library.

fn main() -> std::process::ExitCode {
    payrecon::cli::main(payrecon::cli::parse())
}
