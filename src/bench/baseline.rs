//! "sled alone": the cheapest correct way to commit verified callbacks
//! durably with sled, to measure payrecon's store against. One tree; one
//! thread takes what is queued, drops repeats (already in the tree or
//! earlier in the group), writes the rest as one `Batch`, flushes once and
//! answers. It keeps no payment, history or index: what it does is the
//! least any durable, de-duplicating inbox must do.

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};

use crate::store::flusher::Flusher;

type Job = (Vec<u8>, Vec<u8>, oneshot::Sender<Result<bool, String>>);

/// sled as the store opens it (its cache, its background flush), for
/// every baseline here.
fn open_sled(path: &std::path::Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(crate::store::DEFAULT_CACHE_MB * 1024 * 1024)
        .flush_every_ms(Some(1000))
        .open()
}

#[derive(Clone)]
pub struct SledAlone {
    tree: sled::Tree,
    tx: mpsc::Sender<Job>,
}

impl SledAlone {
    pub fn open(path: &std::path::Path) -> Result<SledAlone, String> {
        let db = open_sled(path).map_err(|e| e.to_string())?;
        let tree = db.open_tree("inbox").map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<Job>(8192);
        let t = tree.clone();
        std::thread::Builder::new()
            .name("baseline-sled".into())
            .spawn(move || committer(db, t, rx))
            .map_err(|e| e.to_string())?;
        Ok(SledAlone { tree, tx })
    }

    /// Commits one record under its de-duplication key; true if it was a
    /// repeat. Durable when it returns.
    pub async fn commit(&self, key: Vec<u8>, value: Vec<u8>) -> Result<bool, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((key, value, tx))
            .await
            .map_err(|_| "closed".to_string())?;
        rx.await.map_err(|_| "closed".to_string())?
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }
}

/// The committing thread: applies each group and hands it to a flusher
/// (the store's, store/flusher.rs: the flush runs while the next group is
/// applied). Not inlined: the instructions scenario counts this thread by
/// its name.
#[inline(never)]
fn committer(db: sled::Db, t: sled::Tree, mut rx: mpsc::Receiver<Job>) {
    let flusher = match Flusher::spawn("baseline-flush", move || {
        db.flush().map(|_| ()).map_err(|e| e.to_string())
    }) {
        Ok(f) => f,
        Err(_) => return, // every job's sender is dropped: "closed"
    };
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < 1024 {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let mut batch = sled::Batch::default();
        let mut seen = HashSet::new();
        let mut answers = vec![];
        for (k, v, tx) in group {
            let dup = seen.contains(&k) || t.contains_key(&k).unwrap_or(false);
            if !dup {
                batch.insert(k.as_slice(), v);
                seen.insert(k);
            }
            answers.push((tx, dup));
        }
        let wrote = !seen.is_empty();
        let applied = t.apply_batch(batch).map_err(|e| e.to_string());
        flusher.send(
            wrote && applied.is_ok(),
            Box::new(move |flush_failed| {
                let res = match (applied, flush_failed) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Some(e)) => Err(e.to_string()),
                    (Ok(()), None) => Ok(()),
                };
                for (tx, dup) in answers {
                    let _ = tx.send(res.clone().map(|_| dup));
                }
            }),
        );
    }
    flusher.finish();
}

/// "sled alone" for the disk scenario: the records of the store at `src`,
/// byte for byte, written into a fresh sled at `dst` the cheapest way sled
/// offers: one tree, in key order, 10 000 per batch, then flushed, closed,
/// reopened (recovery) and flushed again, as the store was. Returns how
/// many records there are and their keys' and values' bytes.
pub fn copy_records(src: &std::path::Path, dst: &std::path::Path) -> Result<(u64, u64), String> {
    let open = |p: &std::path::Path| open_sled(p).map_err(|e| format!("{}: {e}", p.display()));
    let (mut n, mut bytes) = (0u64, 0u64);
    {
        let (from_db, to_db) = (open(src)?, open(dst)?);
        let from = from_db.open_tree("records").map_err(|e| e.to_string())?;
        let to = to_db.open_tree("records").map_err(|e| e.to_string())?;
        let mut batch = sled::Batch::default();
        for kv in from.iter() {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            bytes += (k.len() + v.len()) as u64;
            batch.insert(k, v);
            n += 1;
            if n % 10_000 == 0 {
                to.apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| e.to_string())?;
            }
        }
        to.apply_batch(batch).map_err(|e| e.to_string())?;
        to_db.flush().map_err(|e| e.to_string())?;
    }
    // Recovery and a flush, as the store's own settling step.
    let mut again = open(dst);
    for _ in 0..200 {
        if again.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
        again = open(dst);
    }
    again?.flush().map_err(|e| e.to_string())?;
    Ok((n, bytes))
}
