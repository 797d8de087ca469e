//! How the sandbox settles a transfer: on its timer or its poll count,
//! then the signed callbacks its script asks for, re-sent until answered.

use super::*;

/// Settles AfterMs transfers when their time comes.
pub(super) async fn timer_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let now = Instant::now();
        let due: Vec<String> = {
            let mut timers = lock(&inner.timers);
            let mut due = vec![];
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove_entry().0 .1);
            }
            due
        };
        for inv in due {
            settle(&inner, &inv);
        }
    }
}

/// Callbacks to send for a transfer that just became final: (type,
/// status, orderid) in order, the delay before the first, and the transfer.
pub(super) type Plan = (Vec<(&'static str, &'static str, String)>, u64, NewTransfer);

/// Moves a transfer to its final state; `None` if it already was final.
pub(super) fn finalize(t: &mut Transfer) -> Option<Plan> {
    if matches!(t.phase, Phase::Final(_)) {
        return None;
    }
    t.phase = Phase::Final(t.new.script.outcome);
    let status = match t.new.script.outcome {
        Outcome::Approved => "approved",
        Outcome::Declined => "declined",
    };
    let final_cb = ("transfer", status, t.order_id.clone());
    let mut sends = match t.new.script.callback {
        CallbackMode::Normal => vec![final_cb],
        CallbackMode::Duplicate => vec![final_cb.clone(), final_cb.clone(), final_cb],
        CallbackMode::OutOfOrder => vec![final_cb, ("transfer", "processing", t.order_id.clone())],
        CallbackMode::Never => vec![],
    };
    if t.new.script.reversal && t.new.script.outcome == Outcome::Approved {
        t.reversed = true;
        sends.push(("reversal", "approved", format!("{}r", t.order_id)));
    }
    Some((sends, t.new.script.callback_delay_ms, t.new.clone()))
}

/// Settles a transfer and starts its callbacks.
pub(super) fn settle(inner: &Arc<Inner>, invoice_id: &str) {
    let plan = lock(&inner.transfers)
        .get_mut(invoice_id)
        .and_then(finalize);
    if let Some(plan) = plan {
        spawn_callbacks(inner, plan);
    }
}

pub(super) fn spawn_callbacks(inner: &Arc<Inner>, (sends, delay, transfer): Plan) {
    if sends.is_empty() {
        return;
    }
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        tokio::select! {
            _ = inner2.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
        }
        if !admitted(&inner2).await {
            return;
        }
        for (kind, status, orderid) in sends {
            if !send_callback(&inner2, &transfer, kind, status, &orderid).await {
                return;
            }
        }
    });
}

/// Waits for the callback budget to admit one more transfer's callbacks
/// (at once when there is no limit); `false` if the sandbox stops first.
async fn admitted(inner: &Inner) -> bool {
    let mut changed = inner.callback_budget.subscribe();
    loop {
        let mut admitted = false;
        inner.callback_budget.send_if_modified(|budget| match budget {
            None => {
                admitted = true;
                false
            }
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                admitted = true;
                true
            }
        });
        if admitted {
            return true;
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return false,
            r = changed.changed() => if r.is_err() { return false },
        }
    }
}

/// Sends one callback until it is acknowledged with 200, like the gateway.
/// Each attempt goes to the callback URL as it is then: the gateway's
/// address for a merchant is fixed, and a daemon restarted in a test
/// listens on a new port that `set_callback_url` names.
async fn send_callback(
    inner: &Inner,
    t: &NewTransfer,
    kind: &str,
    status: &str,
    orderid: &str,
) -> bool {
    let amount = format!("{}.{:02}", t.amount_centis / 100, t.amount_centis % 100);
    let ctl = control(status, orderid, &t.invoice_id, &inner.key);
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("type", kind)
        .append_pair("status", status)
        .append_pair("orderid", orderid)
        .append_pair("merchant_order", &t.invoice_id)
        .append_pair("client_orderid", &t.invoice_id)
        .append_pair("amount", &amount)
        .append_pair("currency", &t.currency)
        .append_pair("descriptor", "PAYRECON SANDBOX")
        .append_pair("control", &ctl)
        .finish();
    let mut backoff = Duration::from_millis(50);
    for _ in 0..CALLBACK_ATTEMPTS {
        let Some(url) = lock(&inner.callback_url).clone() else {
            return false;
        };
        let full = format!("{url}?{query}");
        if let Some(tr) = lock(&inner.transfers).get_mut(&t.invoice_id) {
            tr.callbacks_sent += 1;
        }
        let ok =
            matches!(inner.client.get(&full).send().await, Ok(r) if r.status() == StatusCode::OK);
        if ok {
            if let Some(tr) = lock(&inner.transfers).get_mut(&t.invoice_id) {
                tr.callbacks_acked += 1;
            }
            return true;
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    false
}
