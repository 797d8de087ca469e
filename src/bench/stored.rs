//! A large store: time to readiness right after a million payments were
//! written (the daemon as its own process), and bytes on disk per final
//! payment against sled alone with the same records.

use std::path::Path;
use std::time::{Duration, Instant};

use super::footprint::{bench_keys, spawn_daemon, write_config};
use super::{check, disk_usage, ratio, runtime, table, Opts};
use crate::model::{now_ms, Observation, Payment, PollWindow, ProviderId, Source};
use crate::providers::lookup_key;
use crate::state::{Decision, State};
use crate::store::Store;

/// A typical final ConnPay payment: five observations from polls and its
/// callback.
fn typical(id: String, i: usize, now: u64) -> (Payment, Vec<Observation>, Vec<String>) {
    let keys = bench_keys(i);
    let inv = keys["invoice_id"].clone();
    let obs = |seq: u32,
               source: Source,
               raw: &str,
               state: State,
               decision: Decision,
               fields: &[(&str, String)]| Observation {
        seq,
        source,
        at_ms: now + seq as u64 * 4000,
        raw_status: raw.into(),
        state: Some(state),
        decision: Some(decision),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        repeats: 0,
        last_ms: None,
    };
    let order = format!("cp{i:08}");
    let base = [
        ("order_id", order.clone()),
        ("amount_minor", "1250".to_string()),
        ("order_created_date", "2026-11-22 03:00:00".to_string()),
    ];
    let mut fin = base.to_vec();
    fin.extend([
        ("bank_order_id", format!("b{order}")),
        ("commission_minor", "12".into()),
        ("transaction_created_date", "2026-11-22 03:00:09".into()),
        ("secure3d_auth_status", "AUTHENTICATED".into()),
    ]);
    let history = vec![
        obs(
            0,
            Source::Poll,
            "PROCESSING",
            State::Pending,
            Decision::Same,
            &base,
        ),
        obs(
            1,
            Source::Poll,
            "REDIRECT_REQUEST",
            State::ActionRequired,
            Decision::Advance,
            &[
                (
                    "redirect_url",
                    format!("https://sandbox.connpay.com/3ds/{order}"),
                ),
                ("order_id", order.clone()),
            ],
        ),
        obs(
            2,
            Source::Poll,
            "PROCESSING",
            State::Pending,
            Decision::Backwards,
            &base,
        ),
        obs(
            3,
            Source::Poll,
            "APPROVED",
            State::Succeeded,
            Decision::Advance,
            &fin,
        ),
        obs(
            4,
            Source::Callback,
            "approved",
            State::Succeeded,
            Decision::Same,
            &[
                ("type", "sale".into()),
                ("orderid", order.clone()),
                ("amount", "12.50".into()),
                ("currency", "EUR".into()),
            ],
        ),
    ];
    let p = Payment {
        id,
        provider: ProviderId::Connpay,
        keys,
        amount_minor: Some(1250),
        currency: Some("EUR".into()),
        state: State::Succeeded,
        raw_status: Some("APPROVED".into()),
        created_ms: now,
        updated_ms: now + 16_000,
        final_ms: Some(now + 12_000),
        final_source: Some(Source::Poll),
        window: Some(PollWindow {
            ends_ms: now + 150_000,
            next_ms: now + 16_000,
            polls: 4,
            open: false,
        }),
        observations: 5,
        mismatch: None,
    };
    let keys = vec![
        lookup_key(ProviderId::Connpay, "inv", &inv),
        lookup_key(ProviderId::Connpay, "idem", &format!("4211/{inv}")),
        lookup_key(ProviderId::Connpay, "ord", &order),
    ];
    (p, history, keys)
}

/// Opens `path` again once the previous handle has let go of it.
fn reopen(rt: &tokio::runtime::Runtime, path: &Path) -> Result<Store, String> {
    reopen_with(rt, path, false)
}

fn reopen_with(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    compression: bool,
) -> Result<Store, String> {
    rt.block_on(async {
        let mut last = String::new();
        for _ in 0..200 {
            match Store::open_with(path, crate::store::DEFAULT_CACHE_MB, compression) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(last)
    })
}

pub fn restart(opts: &Opts) -> Result<(), String> {
    let (total, open) = if opts.quick {
        (20_000, 2_000)
    } else {
        (1_000_000, 100_000)
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_path = dir.path().join("store");
    let t0 = Instant::now();
    {
        let rt = runtime("loadgen", 1);
        let store = reopen_with(&rt, &store_path, false)?;
        let now = now_ms();
        let items = (0..total).map(|i| {
            let (mut p, mut h, mut keys) = typical(store.next_id().unwrap_or_default(), i, now);
            h.truncate(1);
            keys.truncate(2);
            p.observations = 1;
            if i % (total / open) == 0 {
                p.state = State::Pending;
                p.final_ms = None;
                p.final_source = None;
                p.window = Some(PollWindow {
                    ends_ms: now + 7_200_000,
                    next_ms: now + 3_600_000,
                    polls: 1,
                    open: true,
                });
            }
            (p, h, keys)
        });
        store.bulk_load(items).map_err(|e| e.to_string())?;
    }
    let build = t0.elapsed();
    // The daemon first, on the store as the writes left it: a restart after
    // a busy day, with whatever sled must replay.
    let config = write_config(dir.path(), &store_path, "1h", "2h", false)?;
    let ready = || -> Result<Duration, String> {
        let d = spawn_daemon(&config)?;
        check(d.resumed as usize == open, || {
            format!("daemon resumed {} windows of {open}", d.resumed)
        })?;
        let t = d.ready_after;
        d.stop();
        Ok(t)
    };
    let cold = ready()?;
    // Again, once sled has recovered (and snapshotted) that log.
    let warm = ready()?;
    // Baseline: opening the same store and reading the open windows,
    // in-process, with no daemon around it.
    let rt = runtime("loadgen", 1);
    let t1 = Instant::now();
    let windows = {
        let store = reopen_with(&rt, &store_path, false)?;
        rt.block_on(store.open_windows())
            .map_err(|e| e.to_string())?
            .len()
    };
    let store_open = t1.elapsed();
    drop(rt);
    check(windows == open, || {
        format!("{windows} open windows stored, {open} expected")
    })?;
    let (alloc, _) = disk_usage(&store_path);
    if opts.quick {
        println!("quick: {total} payments stored, the daemon resumed all {open} open windows");
    } else {
        table(
            &[
                "stored",
                "not final",
                "store MiB",
                "ready s, right after the writes",
                "ready s, log recovered",
                "store open + windows s",
                "÷ store alone",
                "target s",
            ],
            &[vec![
                total.to_string(),
                open.to_string(),
                format!("{:.0}", alloc as f64 / 1048576.0),
                format!("{:.2}", cold.as_secs_f64()),
                format!("{:.2}", warm.as_secs_f64()),
                format!("{:.2}", store_open.as_secs_f64()),
                ratio(warm.as_secs_f64(), store_open.as_secs_f64()),
                "2".into(),
            ]],
        );
        println!("(building the store took {:.0} s, uncompressed to keep the run short; each start is measured from process start to the ready line; each daemon was stopped with SIGTERM)", build.as_secs_f64());
    }
    Ok(())
}

pub fn disk(opts: &Opts) -> Result<(), String> {
    let m = if opts.quick { 2_000 } else { 50_000 };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("store");
    let mut logical = 0usize;
    {
        let rt = runtime("loadgen", 1);
        let store = reopen(&rt, &path)?;
        let now = now_ms();
        let items: Vec<_> = (0..m)
            .map(|i| typical(store.next_id().unwrap_or_default(), i, now))
            .collect();
        for (p, h, k) in &items {
            logical += serde_json::to_vec(p).map(|v| v.len()).unwrap_or(0)
                + h.iter()
                    .map(|o| serde_json::to_vec(o).map(|v| v.len()).unwrap_or(0) + p.id.len() + 5)
                    .sum::<usize>()
                + k.iter().map(|k| k.len() + p.id.len()).sum::<usize>()
                + p.id.len();
        }
        store.bulk_load(items).map_err(|e| e.to_string())?;
    }
    // Let sled settle: reopen (recovery), flush, close.
    {
        let rt = runtime("loadgen", 1);
        let store = reopen(&rt, &path)?;
        check(
            rt.block_on(store.list(None, None, None, m + 1))
                .map_err(|e| e.to_string())?
                .len()
                == m,
            || "payments missing after reopen".into(),
        )?;
        rt.block_on(store.close()).map_err(|e| e.to_string())?;
    }
    let (alloc, apparent) = disk_usage(&path);
    let per = alloc as f64 / m as f64;
    let per_logical = logical as f64 / m as f64;
    // Baseline: the same records, byte for byte, written the cheapest way
    // sled offers (one tree, key order, big batches): what sled 0.34 takes
    // on disk for these bytes, whoever writes them.
    let alone = dir.path().join("sled-alone");
    let (records, bytes) = super::baseline::copy_records(&path, &alone)?;
    let (alone_alloc, _) = disk_usage(&alone);
    let per_alone = alone_alloc as f64 / m as f64;
    if opts.quick {
        println!("quick: {m} final payments with 5 observations each, all there after reopen");
    } else {
        table(
            &[
                "final payments",
                "on disk MiB",
                "apparent MiB",
                "per payment B",
                "records/payment",
                "record bytes/payment",
                "sled alone, same records B",
                "÷ sled alone",
                "logical B",
                "÷ logical",
                "target B",
            ],
            &[vec![
                m.to_string(),
                format!("{:.1}", alloc as f64 / 1048576.0),
                format!("{:.1}", apparent as f64 / 1048576.0),
                format!("{per:.0}"),
                format!("{:.1}", records as f64 / m as f64),
                format!("{:.0}", bytes as f64 / m as f64),
                format!("{per_alone:.0}"),
                ratio(per, per_alone),
                format!("{per_logical:.0}"),
                ratio(per, per_logical),
                "2048".into(),
            ]],
        );
    }
    Ok(())
}
