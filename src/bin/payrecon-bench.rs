//! payrecon-bench: how fast and how lean payrecon is, as ratios against
//! baselines measured in the same run. See BENCHMARKS.md.

fn main() -> std::process::ExitCode {
    payrecon::bench::main(std::env::args().skip(1).collect())
}
