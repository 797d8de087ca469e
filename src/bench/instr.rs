//! Instructions per operation, counted by `valgrind --tool=callgrind`:
//! stable where timings are not (a shared, noisy machine).
//!
//! Each figure is the difference of two runs of this binary under
//! callgrind (`payrecon-bench instr OP COUNT`) that do the same set-up and
//! perform the operation `LOW` and `HIGH` times, divided by `HIGH - LOW`:
//! start-up and set-up cancel out. Counted: the calling thread and the
//! store's writer and flushing threads (for the baseline, its committing
//! and flushing threads); left out for both: sled's own background threads
//! (the periodic flusher and its I/O pool), whose work depends on
//! wall-clock time, which valgrind stretches differently in each run. Operations run one at a time, so
//! each callback pays its own flush; the flush's system call is not an
//! instruction. A repeated poll answer is counted in memory; its durable
//! cost is the checkpoint (once a minute, per payment with repeats: one
//! rewrite of the payment and of the repeated observation, about what a
//! changed answer costs), which the repeat figure leaves out.

use std::process::Command;

use super::baseline::SledAlone;
use super::{check, ratio, runtime, table, Opts};
use crate::model::{now_ms, Keys, Payment, PollWindow, Report, Source};
use crate::state::State;
use crate::store::{codec, CallbackRecord, Store, WindowChange};

const SETUP: usize = 1_000;
const LOW: usize = 200;
const HIGH: usize = 800;
/// Payments the repeat operation cycles over.
const REPEATED: usize = 50;

pub fn run(opts: &Opts) -> Result<(), String> {
    if opts.quick {
        println!("quick: skipped (instruction counts are not a correctness check)");
        return Ok(());
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind not found: skipped");
        return Ok(());
    }
    let per = |op: &str| -> Result<f64, String> {
        let low = count(op, LOW)?;
        let high = count(op, HIGH)?;
        Ok((high as f64 - low as f64) / (HIGH - LOW) as f64)
    };
    let callback = per("sled-callback")?;
    let get = per("sled-get")?;
    let rows = [
        (
            "callback, new (durable)",
            "callback",
            callback,
            "sled alone: de-duplicate, batch, flush",
        ),
        (
            "poll answer, repeat (counted in memory)",
            "poll-repeat",
            get,
            "sled get + decode of the payment",
        ),
        (
            "poll answer, changed (durable)",
            "poll-change",
            callback,
            "sled alone: de-duplicate, batch, flush",
        ),
    ];
    let mut out = vec![];
    for (name, op, base, base_name) in rows {
        let ours = per(op)?;
        check(ours > 0.0, || format!("{op}: no instructions counted"))?;
        out.push(vec![
            name.to_string(),
            format!("{ours:.0}"),
            format!("{base:.0}"),
            base_name.to_string(),
            ratio(ours, base),
        ]);
    }
    table(
        &[
            "operation",
            "payrecon instr/op",
            "baseline instr/op",
            "baseline",
            "÷ baseline",
        ],
        &out,
    );
    Ok(())
}

/// Instructions of one run of `op` done `n` times, under callgrind.
fn count(op: &str, n: usize) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("callgrind.out");
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .args([
            "--toggle-collect=*instr::child*",
            "--toggle-collect=*writer::run*",
            "--toggle-collect=*baseline::committer*",
            "--toggle-collect=*flusher::run*",
        ])
        .arg(exe)
        .args(["instr", op, &n.to_string()])
        .arg(dir.path().join("store"))
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    check(status.success(), || format!("callgrind run of {op} failed"))?;
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no total in callgrind's output for {op}"))
}

fn payment(
    store: &Store,
    i: usize,
    now: u64,
) -> (Payment, Vec<crate::model::Observation>, Vec<String>) {
    let inv = format!("instr-{i}");
    let window = PollWindow {
        ends_ms: now + 180_000,
        next_ms: now + 4_000,
        polls: 0,
        open: true,
    };
    let id = store.next_id().unwrap_or_else(|_| format!("pay_instr{i}"));
    let keys = Keys::from([("invoice_id".to_string(), inv.clone())]);
    let p = super::pending(id, keys, 1250, Some(window), now);
    (p, vec![], vec![format!("connpay|inv|{inv}")])
}

fn report(source: Source, raw: &str) -> Report {
    Report {
        source,
        raw_status: raw.into(),
        state: Some(State::Pending),
        fields: [("orderId".to_string(), "cp-order-1".to_string())].into(),
        learned_keys: vec![],
    }
}

/// The child: the same set-up whatever `n`, then `op` done `n` times.
#[inline(never)] // counted by name under callgrind
pub fn child(args: &[String]) -> std::process::ExitCode {
    let (Some(op), Some(n), Some(dir)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: payrecon-bench instr OP COUNT DIR");
        return std::process::ExitCode::from(2);
    };
    let rt = runtime("payrecon", 1);
    let res: Result<(), String> = rt.block_on(async {
        let path = std::path::Path::new(dir);
        let now = now_ms();
        let records: Vec<CallbackRecord> = (0..SETUP)
            .map(|i| CallbackRecord {
                dedupe_key: format!("connpay|cb|approved|sale|o{i}|instr-{i}"),
                match_key: format!("connpay|inv|instr-{i}"),
                report: Report {
                    state: Some(State::Succeeded),
                    ..report(Source::Callback, "approved")
                },
                received_ms: now,
                unsigned_claim: false,
            })
            .collect();
        if op == "sled-callback" {
            let sled = SledAlone::open(path)?;
            for r in records.iter().take(n) {
                let v = codec::Record::encode(r);
                sled.commit(r.dedupe_key.clone().into_bytes(), v).await?;
            }
            return Ok(());
        }
        if op == "sled-get" {
            let db = sled::open(path).map_err(|e| e.to_string())?;
            let probe = Store::open(&path.join("ids")).map_err(|e| e.to_string())?;
            let symbols = codec::Symbols::default();
            for i in 0..SETUP {
                let (p, _, _) = payment(&probe, i, now);
                let record = codec::payment_record(&p, &codec::History::new(0), &symbols);
                db.insert(format!("P{i:08}"), record)
                    .map_err(|e| e.to_string())?;
            }
            for i in 0..n {
                let raw = db.get(format!("P{i:08}")).map_err(|e| e.to_string())?;
                let p = raw.map(|v| codec::payment_of(b"P", &v, &symbols));
                std::hint::black_box(p.transpose().map_err(|e| e.to_string())?);
            }
            return Ok(());
        }
        let store = Store::open(path).map_err(|e| e.to_string())?;
        let items: Vec<_> = (0..SETUP).map(|i| payment(&store, i, now)).collect();
        let ids: Vec<String> = items.iter().map(|(p, _, _)| p.id.clone()).collect();
        store.bulk_load(items).map_err(|e| e.to_string())?;
        let e = |e: crate::store::StoreError| e.to_string();
        // Every payment has one poll answer recorded before the count.
        for id in &ids {
            store
                .observe(
                    id,
                    report(Source::Poll, "PROCESSING"),
                    WindowChange::Next(now + 4_000),
                    now,
                )
                .await
                .map_err(e)?;
        }
        for i in 0..n {
            let id = &ids[i % SETUP];
            match op.as_str() {
                "callback" => {
                    store.ingest_callback(records[i].clone()).await.map_err(e)?;
                }
                "poll-repeat" => {
                    // Over the same few payments: the checkpoint at close
                    // writes REPEATED payments in both runs and cancels out,
                    // leaving the in-memory cost of a repeat.
                    let id = &ids[i % REPEATED];
                    let o = store
                        .observe(
                            id,
                            report(Source::Poll, "PROCESSING"),
                            WindowChange::Next(now + 8_000),
                            now + 4_000,
                        )
                        .await
                        .map_err(e)?;
                    check(o.repeat, || "not taken as a repeat".into())?;
                }
                "poll-change" => {
                    store
                        .observe(
                            id,
                            report(Source::Poll, "WAITING_3DS"),
                            WindowChange::Next(now + 8_000),
                            now + 4_000,
                        )
                        .await
                        .map_err(e)?;
                }
                other => return Err(format!("unknown op {other}")),
            }
        }
        store.close().await.map_err(e)
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("instr {op}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
