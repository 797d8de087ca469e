//! The PostgreSQL engine (`--store postgres`, docs/postgres.md): durable
//! callback ingest and polls, with one instance and with three on one
//! database, each beside the cheapest correct way to do the same database
//! work with the same driver (tokio-postgres through deadpool):
//!
//! - ingest: one `INSERT … ON CONFLICT DO NOTHING` of each callback's
//!   de-duplication key and record, committed (one round trip, durable:
//!   `synchronous_commit` as the server has it), from the same number of
//!   tasks; and the same insert behind the same hyper serve loop before
//!   its 200 (HTTP and a durable commit together);
//! - polls: the same status requests at the same rate with bare reqwest,
//!   each after the one conditional `UPDATE` that takes a window's lease.
//!
//! The server runs on this machine: its CPU (every process named
//! `postgres`) is counted with payrecon's and with the baseline's.
//! `PAYRECON_BENCH_DATABASE_URL` names the database; each run works in a
//! schema of its own, dropped at the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::footprint::SimChild;
use super::ingest::{
    callbacks, drive, fan_out, load_payments, records, serve_loopback, verify, Load,
};
use super::{check, ms, quantile, ratio, runtime, table, thread_cpu, Opts};
use crate::cli::demo::LoopbackConfig;
use crate::config::Config;
use crate::daemon::{self, Daemon, Listeners};
use crate::engine::PollOutcome;
use crate::model::now_ms;
use crate::store::pg::{pool, PgSettings};
use crate::store::Store;

pub const URL_ENV: &str = "PAYRECON_BENCH_DATABASE_URL";
const KEY: &str = "bench-control-key";
const KEY_ENV: &str = "PAYRECON_BENCH_CONTROL_KEY";
/// Connections per instance and for the baselines.
const POOL: usize = 16;

/// A schema of its own on the bench database.
struct Db {
    url: String,
    schema: String,
    admin: Pool,
}

impl Db {
    async fn open() -> Result<Db, String> {
        let url = std::env::var(URL_ENV)
            .map_err(|_| format!("--store postgres needs {URL_ENV} (postgres://user@host/db)"))?;
        let admin = pool(&PgSettings {
            url: url.clone(),
            password: None,
            pool_size: 2,
            schema: None,
        })
        .map_err(|e| e.to_string())?;
        let schema = format!("payrecon_bench_{:08x}", fastrand::u32(..));
        let c = admin.get().await.map_err(|e| e.to_string())?;
        c.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Db { url, schema, admin })
    }

    fn settings(&self) -> PgSettings {
        PgSettings {
            url: self.url.clone(),
            password: None,
            pool_size: POOL,
            schema: Some(self.schema.clone()),
        }
    }

    /// A daemon's config on this schema, polling the sandbox at `base_url`.
    fn config(&self, base_url: &str, loopback: LoopbackConfig) -> Result<Config, String> {
        let dir = std::env::temp_dir().join("payrecon-bench-unused");
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let store = format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}{sep}options=-csearch_path%3D{}\"\npool_size = {POOL}\n",
            self.url, self.schema
        );
        let text = loopback
            .render(&dir, base_url)
            .replacen("[store]\n", &store, 1)
            .replace("max_body_bytes = 4096", "max_body_bytes = 16384");
        let env = HashMap::from([(KEY_ENV.to_string(), KEY.to_string())]);
        Config::parse("bench config", &text, &env).map_err(|e| e.to_string())
    }

    async fn drop(self) {
        if let Ok(c) = self.admin.get().await {
            let _ = c
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .await;
        }
    }
}

async fn start(config: &Config, cancel: &CancellationToken) -> Result<Daemon, String> {
    let l = Listeners::bind(config).await.map_err(|e| e.to_string())?;
    daemon::start(config, l, cancel.clone())
        .await
        .map_err(|e| e.to_string())
}

/// CPU ticks of every `postgres` process on the machine (the server and
/// its backends), by pid, from /proc.
fn postgres_ticks() -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("postgres") {
            continue;
        }
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(pid, n(11) + n(12));
    }
    out
}

/// A CPU reading: this process's threads named with one of the prefixes
/// (all of them without one), and each server process's.
struct Cpu {
    ours: Duration,
    db: HashMap<u32, u64>,
}

impl Cpu {
    fn now(prefixes: &[&str]) -> Cpu {
        let (named, all) = thread_cpu(prefixes);
        Cpu {
            ours: if prefixes.is_empty() { all } else { named },
            db: postgres_ticks(),
        }
    }

    /// (ours, the server's) since this reading. A server process started
    /// since counts whole; one that ended since is lost (backends live as
    /// long as the pools' connections, so few do).
    fn since(&self, prefixes: &[&str]) -> (Duration, Duration) {
        let ours = Cpu::now(prefixes).ours.saturating_sub(self.ours);
        let ticks: u64 = postgres_ticks()
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.db.get(pid).copied().unwrap_or(0)))
            .sum();
        let db = Duration::from_millis(ticks * 1000 / super::TICKS_PER_SEC);
        (ours, db)
    }
}

/// CPU µs per request since `from`: (the `payrecon` runtime's threads,
/// the server's processes).
fn per_request(from: &Cpu, n: usize) -> (f64, f64) {
    let (ours, db) = from.since(&["payrecon"]);
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    (us(ours), us(db))
}

pub fn ingest(opts: &Opts) -> Result<(), String> {
    let rt = runtime("payrecon", 2);
    let db = rt.block_on(Db::open())?;
    let r = ingest_on(&db, opts, &rt);
    rt.block_on(db.drop());
    r
}

fn ingest_on(db: &Db, opts: &Opts, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    let (c, n) = if opts.quick { (16, 400) } else { (64, 12_000) };
    let load_rt = runtime("loadgen", 1);
    let mut rows = vec![];
    for instances in [1, 3] {
        let loopback = LoopbackConfig {
            key_env: KEY_ENV.into(),
            ..Default::default()
        };
        let config = db.config("http://127.0.0.1:9", loopback)?;
        let cancel = CancellationToken::new();
        let mut ds = vec![];
        for _ in 0..instances {
            ds.push(rt.block_on(start(&config, &cancel))?);
        }
        let store = ds[0].engine.store().clone();
        let prefix = format!("pg{instances}");
        load_payments(&store, &prefix, n)?;
        let reqs = Arc::new(callbacks(&prefix, n));
        // Connections spread over the instances, as a balancer spreads them.
        let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.callback_addr).collect();
        let cpu0 = Cpu::now(&["payrecon"]);
        let ours = load_rt.block_on(drive(&addrs, "/callback/connpay", reqs.clone(), c, None));
        let cpu = per_request(&cpu0, reqs.len());
        check(ours.errors == 0 && ours.ok == reqs.len(), || {
            format!(
                "{instances} instance(s): {} of {} acknowledged, {} failed",
                ours.ok,
                reqs.len(),
                ours.errors
            )
        })?;
        rt.block_on(verify(&store, &prefix, n))?;
        cancel.cancel();
        for d in ds {
            rt.block_on(d.wait());
        }
        rows.push((instances, reqs.len(), ours, cpu));
    }

    // The baselines, on a table of their own in the same schema.
    let reqs = Arc::new(callbacks("pgbase", n));
    let pool = pool(&db.settings()).map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = pool.get().await.map_err(|e| e.to_string())?;
        c.batch_execute(
            "CREATE TABLE bench_inbox (dedupe_key text PRIMARY KEY, record jsonb NOT NULL)",
        )
        .await
        .map_err(|e| e.to_string())
    })?;
    let records = records(&reqs);
    let cpu0 = Cpu::now(&["payrecon"]);
    let inserted = rt.block_on(insert_alone(&pool, records, c));
    let insert_cpu = per_request(&cpu0, reqs.len());
    let hyper_cancel = CancellationToken::new();
    let p = pool.clone();
    let hyper_addr = rt.block_on(serve_loopback(&hyper_cancel, move |req| {
        let p = p.clone();
        async move {
            let q = req.uri().query().unwrap_or_default().to_string();
            let record = serde_json::json!({ "query": q }).to_string();
            Ok(match insert(&p, &format!("http|{q}"), &record).await {
                Ok(()) => crate::http::text(hyper::StatusCode::OK, "OK"),
                Err(_) => crate::http::text(hyper::StatusCode::SERVICE_UNAVAILABLE, "no"),
            })
        }
    }))?;
    let both = load_rt.block_on(drive(&[hyper_addr], "/", reqs.clone(), c, None));
    hyper_cancel.cancel();
    check(both.ok == reqs.len(), || {
        format!("hyper + INSERT acknowledged {} of {}", both.ok, reqs.len())
    })?;
    let stored: i64 = rt.block_on(async {
        let c = pool.get().await.map_err(|e| e.to_string())?;
        let r = c
            .query_one("SELECT count(*) FROM bench_inbox", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(r.get(0))
    })?;
    check(stored as usize == 2 * n, || {
        format!("the baselines hold {stored} rows of {}", 2 * n)
    })?;
    if opts.quick {
        println!("quick (PostgreSQL): every acknowledged callback stored exactly once, on 1 and 3 instances");
        return Ok(());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(instances, len, ours, cpu)| {
            vec![
                instances.to_string(),
                len.to_string(),
                format!("{:.0}", ours.rps()),
                ms(quantile(&ours.lat_us, 0.5)),
                ms(quantile(&ours.lat_us, 0.99)),
                format!("{:.0} / {:.0}", cpu.0, cpu.1),
                format!("{:.0}", inserted.rps()),
                format!("{:.0}", both.rps()),
                ratio(ours.rps(), inserted.rps()),
                ratio(ours.rps(), both.rps()),
            ]
        })
        .collect();
    table(
        &[
            "instances",
            "requests",
            "payrecon req/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/req payrecon / db",
            "INSERT alone req/s",
            "hyper + INSERT req/s",
            "÷ INSERT",
            "÷ hyper + INSERT",
        ],
        &table_rows,
    );
    println!("C={c}; the baselines ran once, beside both payrecon rows; the server is on this machine and shares its two cores");
    println!(
        "INSERT alone: CPU µs/req {:.0} (bench process) / {:.0} (db)",
        insert_cpu.0, insert_cpu.1
    );
    Ok(())
}

/// One durable, de-duplicating insert: a round trip and a commit.
async fn insert(pool: &Pool, key: &str, record: &str) -> Result<(), String> {
    let c = pool.get().await.map_err(|e| e.to_string())?;
    let st = c
        .prepare_cached(
            "INSERT INTO bench_inbox (dedupe_key, record) VALUES ($1, $2::text::jsonb) \
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .await
        .map_err(|e| e.to_string())?;
    c.execute(&st, &[&key, &record])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The same verified records committed by `conns` tasks, no HTTP.
async fn insert_alone(
    pool: &Pool,
    records: Vec<crate::store::CallbackRecord>,
    conns: usize,
) -> Load {
    let rows: Vec<(String, String)> = records
        .into_iter()
        .map(|r| {
            let json = serde_json::to_string(&r).unwrap_or_default();
            (r.dedupe_key, json)
        })
        .collect();
    let pool = pool.clone();
    fan_out(rows, conns, None, move |(k, v): (String, String)| {
        let pool = pool.clone();
        async move { insert(&pool, &k, &v).await.is_ok() }
    })
    .await
}

pub fn poll(opts: &Opts) -> Result<(), String> {
    let (k, warm, measure) = if opts.quick {
        (200, Duration::from_secs(6), Duration::from_secs(4))
    } else {
        (2_000, Duration::from_secs(8), Duration::from_secs(30))
    };
    let sim = SimChild::spawn(k)?;
    let mut rows = vec![];
    let mut one_rate = 0.0;
    for instances in [1, 3] {
        let rt = runtime("payrecon", 2);
        let db = rt.block_on(Db::open())?;
        let r = poll_on(&db, &sim, k, instances, warm, measure, opts, &rt);
        if let Ok((rate, _)) = &r {
            if instances == 1 {
                one_rate = *rate;
            }
        }
        rt.block_on(db.drop());
        let (_, row) = r?;
        rows.push(row);
    }

    // Baseline: the same requests at the same rate, each after the lease
    // UPDATE, on a windows table of its own.
    let rt = runtime("baseline", 2);
    let db = rt.block_on(Db::open())?;
    let base = rt.block_on(poll_baseline(
        &db,
        &sim.base_url(),
        k,
        one_rate,
        measure / 2,
    ));
    rt.block_on(db.drop());
    let (base_cpu, base_sent) = base?;
    check(base_sent > 0, || "baseline sent nothing".into())?;
    if opts.quick {
        println!(
            "quick (PostgreSQL): polls ran in steady state on 1 and 3 instances and none failed"
        );
        return Ok(());
    }
    let base_per_k = base_cpu / base_sent as f64 * 1000.0;
    for r in &mut rows {
        let ours: f64 = r[r.len() - 1].parse().unwrap_or(0.0);
        r.push(format!("{base_per_k:.3}"));
        r.push(ratio(ours, base_per_k));
    }
    table(
        &[
            "instances",
            "K",
            "expected polls/s",
            "achieved",
            "off",
            "failed",
            "left to another",
            "lag p99 ms",
            "CPU s/1k polls",
            "baseline CPU s/1k",
            "÷ baseline",
        ],
        &rows,
    );
    println!("CPU counts this process and the PostgreSQL server; the baseline is reqwest plus the lease UPDATE per request, at the 1-instance rate");
    Ok(())
}

/// K windows loaded, `instances` daemons polling them: the achieved rate
/// and the table row.
#[allow(clippy::too_many_arguments)]
fn poll_on(
    db: &Db,
    sim: &SimChild,
    k: usize,
    instances: usize,
    warm: Duration,
    measure: Duration,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
) -> Result<(f64, Vec<String>), String> {
    let config = db.config(&sim.base_url(), super::poll::settings())?;
    let store = rt
        .block_on(Store::open_postgres(&db.settings()))
        .map_err(|e| e.to_string())?;
    super::poll::load_windows(&store, k)?;
    drop(store);
    let cancel = CancellationToken::new();
    let mut ds = vec![];
    for _ in 0..instances {
        ds.push(rt.block_on(start(&config, &cancel))?);
    }
    let sum = |f: &dyn Fn(&crate::engine::Counters) -> u64| -> u64 {
        ds.iter().map(|d| f(&d.engine.counters)).sum()
    };
    let polls = || sum(&|c| c.polls(PollOutcome::Ok) + c.polls(PollOutcome::Failed));
    let failed = || sum(&|c| c.polls(PollOutcome::Failed));
    let elsewhere = || sum(&|c| c.windows_leased_elsewhere.load(Ordering::Relaxed));
    std::thread::sleep(warm);
    let (p0, f0, e0) = (polls(), failed(), elsewhere());
    for d in &ds {
        d.engine.counters.poll_lag.reset();
    }
    let cpu0 = Cpu::now(&[]);
    let t0 = Instant::now();
    std::thread::sleep(measure);
    let (ours_cpu, db_cpu) = cpu0.since(&[]);
    let elapsed = t0.elapsed().as_secs_f64();
    let (p1, f1, e1) = (polls(), failed(), elsewhere());
    let lag99 = ds
        .iter()
        .map(|d| d.engine.counters.poll_lag.quantile_us(0.99))
        .max()
        .unwrap_or(0);
    cancel.cancel();
    for d in ds {
        rt.block_on(d.wait());
    }
    let achieved = (p1 - p0) as f64 / elapsed;
    let expected = k as f64 / 4.0;
    check(p1 > p0, || format!("{instances} instance(s): no polls"))?;
    if opts.quick {
        check(f1 == f0, || format!("{} polls failed", f1 - f0))?;
    } else {
        // Each window polled by one instance: three instances poll no more
        // than one (a double poll would show as up to three times as many).
        check(achieved < expected * 1.2, || {
            format!("{instances} instances polled {achieved:.0}/s for {expected:.0} expected: windows polled twice")
        })?;
    }
    let per_k = (ours_cpu + db_cpu).as_secs_f64() / (p1 - p0) as f64 * 1000.0;
    Ok((
        achieved,
        vec![
            instances.to_string(),
            k.to_string(),
            format!("{expected:.0}"),
            format!("{achieved:.0}"),
            format!("{:+.1}%", (achieved / expected - 1.0) * 100.0),
            (f1 - f0).to_string(),
            (e1 - e0).to_string(),
            format!("{:.1}", lag99 as f64 / 1000.0),
            format!("{per_k:.3}"),
        ],
    ))
}

/// Status requests for the K transfers round-robin at `rate` for `dur`,
/// each after the conditional UPDATE that takes the window's lease: the
/// CPU seconds it took (this process and the server) and requests sent.
async fn poll_baseline(
    db: &Db,
    base_url: &str,
    k: usize,
    rate: f64,
    dur: Duration,
) -> Result<(f64, u64), String> {
    let pool = pool(&db.settings()).map_err(|e| e.to_string())?;
    {
        let c = pool.get().await.map_err(|e| e.to_string())?;
        c.batch_execute(
            "CREATE TABLE windows (payment_id text PRIMARY KEY, lease_owner text, lease_until_ms bigint); \
             INSERT INTO windows (payment_id) SELECT 'w' || g FROM generate_series(0, 99999) g",
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let client = reqwest::Client::new();
    let cpu0 = Cpu::now(&["baseline"]);
    let sent = super::poll::paced(rate, dur, |n| {
        let i = n as usize % k;
        let (url, body) = super::poll::status_request(base_url, i);
        let (client, pool) = (client.clone(), pool.clone());
        async move {
            let now = now_ms() as i64;
            let leased = async {
                let c = pool.get().await.ok()?;
                let st = c
                    .prepare_cached(
                        "UPDATE windows SET lease_owner = $2, lease_until_ms = $3 \
                         WHERE payment_id = $1 \
                           AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4)",
                    )
                    .await
                    .ok()?;
                let id = format!("w{i}");
                c.execute(&st, &[&id, &"base", &(now + 20_000), &now])
                    .await
                    .ok()
            };
            if leased.await == Some(1) {
                if let Ok(r) = client.post(url).json(&body).send().await {
                    let _ = r.bytes().await;
                }
            }
        }
    })
    .await;
    let (ours, db) = cpu0.since(&["baseline"]);
    Ok(((ours + db).as_secs_f64(), sent))
}
