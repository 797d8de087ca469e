//! The benchmarks behind `payrecon-bench`. Every figure comes with a
//! baseline measured in the same run on the same machine, and the result is
//! reported as a ratio. `--quick` checks only correctness (counts, nothing
//! lost), never timing.
//!
//! CPU is attributed by thread name: payrecon runs on a runtime named
//! `payrecon`, load generators on `loadgen`, baselines on `baseline`. The
//! ConnPay sandbox of the poll scenario runs in a child process, so its CPU
//! and memory are not payrecon's. Scenarios that need the whole process
//! (memory, restart) re-run this binary as the daemon (`payrecon-bench run`),
//! which is the same library code path as `payrecon run`.

mod baseline;
mod footprint;
mod ingest;
mod instr;
mod poll;
mod postgres;
mod stored;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub use footprint::SimChild;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    /// Scenarios to run; empty means all.
    pub only: Vec<String>,
    /// Overrides the poll scenario's K values and steady-state seconds
    /// (for profiling one size).
    pub poll_k: Option<usize>,
    pub poll_seconds: Option<u64>,
    /// `--store postgres`: the ingest and poll scenarios on PostgreSQL.
    pub postgres: bool,
}

impl Opts {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// One benchmark scenario: fails on a correctness check.
type Scenario = fn(&Opts) -> Result<(), String>;

const USAGE: &str = "usage: payrecon-bench [--quick] [--store sled|postgres] [--only ingest|poll|memory|restart|disk|instructions]... [--poll-k K] [--poll-seconds S]

--store postgres runs ingest and poll on PostgreSQL, one instance and three,
on the database PAYRECON_BENCH_DATABASE_URL names (a schema of its own).";

pub fn main(args: Vec<String>) -> ExitCode {
    match args.first().map(String::as_str) {
        // Child modes: the daemon itself, and the sandbox in its own process.
        Some("run") => {
            let argv = std::iter::once("payrecon".to_string()).chain(args);
            return crate::cli::main(crate::cli::parse_from(argv));
        }
        Some("serve-sim") => return footprint::serve_sim(&args[1..]),
        Some("instr") => return instr::child(&args[1..]),
        _ => {}
    }
    let mut opts = Opts {
        quick: false,
        only: vec![],
        poll_k: None,
        poll_seconds: None,
        postgres: false,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => match it.next() {
                Some(s) => opts.only.push(s),
                None => return usage(),
            },
            "--poll-k" => match it.next().and_then(|v| v.parse().ok()) {
                Some(k) => opts.poll_k = Some(k),
                None => return usage(),
            },
            "--store" => match it.next().as_deref() {
                Some("sled") => opts.postgres = false,
                Some("postgres") => opts.postgres = true,
                _ => return usage(),
            },
            "--poll-seconds" => match it.next().and_then(|v| v.parse().ok()) {
                Some(s) => opts.poll_seconds = Some(s),
                None => return usage(),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    println!(
        "payrecon-bench{}: {}",
        if opts.quick {
            " --quick (correctness only)"
        } else {
            ""
        },
        machine()
    );
    let started = std::time::Instant::now();
    let mut failures = vec![];
    // On PostgreSQL, ingest and poll; the others measure sled's files.
    let scenarios: [(&str, Option<Scenario>); 6] = if opts.postgres {
        [
            ("ingest", Some(postgres::ingest)),
            ("poll", Some(postgres::poll)),
            ("memory", None),
            ("restart", None),
            ("disk", None),
            ("instructions", None),
        ]
    } else {
        [
            ("ingest", Some(ingest::run)),
            ("poll", Some(poll::run)),
            ("memory", Some(footprint::memory)),
            ("restart", Some(stored::restart)),
            ("disk", Some(stored::disk)),
            ("instructions", Some(instr::run)),
        ]
    };
    let mut ran = 0;
    for (name, f) in scenarios {
        let Some(f) = f.filter(|_| opts.wants(name)) else {
            continue;
        };
        ran += 1;
        println!("\n## {name}");
        let _ = std::io::stdout().flush();
        if let Err(e) = f(&opts) {
            println!("FAILED: {e}");
            failures.push(name);
        }
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "bench: {} passed, {} failed",
        ran - failures.len(),
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// A line describing the machine: CPU model, cores, memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}")
}

/// A multi-thread runtime whose threads carry `name` (for CPU accounting).
pub fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Linux's USER_HZ, fixed at 100 for the /proc ABI.
const TICKS_PER_SEC: u64 = 100;

/// CPU time (user + system) of this process's threads, split by whether
/// their name starts with one of `prefixes`: (matching, all).
pub fn thread_cpu(prefixes: &[&str]) -> (Duration, Duration) {
    let mut matching = 0u64;
    let mut all = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (Duration::ZERO, Duration::ZERO);
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        all += ticks;
        if prefixes.iter().any(|p| comm.starts_with(p)) {
            matching += ticks;
        }
    }
    let d = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SEC);
    (d(matching), d(all))
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes allocated on disk under `dir` (blocks, not apparent size), and
/// the apparent size.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                allocated += m.blocks() * 512;
                apparent += m.len();
            }
        }
    }
    (allocated, apparent)
}

/// The value at quantile `q` of sorted samples.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Prints a table with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    if let Some(r) = rows.iter().find(|r| r.len() != headers.len()) {
        println!(
            "(table skipped: a row has {} cells for {} headers: {r:?})",
            r.len(),
            headers.len()
        );
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:>w$}", c, w = widths[i]))
            .collect();
        println!("| {} |", s.join(" | "));
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| format!("{}:", "-".repeat(w + 1)))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
    let _ = std::io::stdout().flush();
}

pub fn ms(us: u32) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}", a / b)
    }
}

/// Checks a correctness condition of a benchmark.
pub fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// A ConnPay payment in EUR, just tracked: what the scenarios bulk-load.
fn pending(
    id: String,
    keys: crate::model::Keys,
    amount_minor: i64,
    window: Option<crate::model::PollWindow>,
    now: u64,
) -> crate::model::Payment {
    crate::model::Payment {
        id,
        provider: crate::model::ProviderId::Connpay,
        keys,
        amount_minor: Some(amount_minor),
        currency: Some("EUR".into()),
        state: crate::state::State::Pending,
        raw_status: None,
        created_ms: now,
        updated_ms: now,
        final_ms: None,
        final_source: None,
        window,
        observations: 0,
        mismatch: None,
    }
}
