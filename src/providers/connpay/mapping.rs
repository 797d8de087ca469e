//! ConnPay's statuses mapped to payrecon's states, an answer read into a
//! report, and the callback's control signature.

use super::*;

/// Maps an inquiry `state` to a normalized state.
pub fn map_state(state: &str) -> Option<State> {
    match state {
        "PROCESSING" => Some(State::Pending),
        "REDIRECT_REQUEST" | "TRANSFER_FEE_REQUEST" => Some(State::ActionRequired),
        "APPROVED" => Some(State::Succeeded),
        "DECLINED" => Some(State::Failed),
        _ => None,
    }
}

/// Maps a callback's `type` and `status` (read together, never alone).
pub fn map_callback(kind: &str, status: &str) -> Option<State> {
    match (kind, status) {
        ("reversal" | "chargeback", "approved") => Some(State::Reversed),
        // A reversal that did not go through changes nothing.
        ("reversal" | "chargeback", _) => None,
        (_, "approved") => Some(State::Succeeded),
        (_, "declined" | "filtered" | "error") => Some(State::Failed),
        (_, "processing") => Some(State::Pending),
        _ => None,
    }
}

/// `control` = lowercase hex SHA-1 of status + orderid + client_orderid + key.
pub fn control(status: &str, orderid: &str, client_orderid: &str, key: &str) -> String {
    let mut h = Sha1::new();
    h.update(status.as_bytes());
    h.update(orderid.as_bytes());
    h.update(client_orderid.as_bytes());
    h.update(key.as_bytes());
    hex(&h.finalize())
}

/// Lower-case hex, without a `format!` per byte (on every callback).
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Turns an inquiry answer into a report.
pub fn report_from(resp: &StatusResponse) -> Result<Report, InquiryError> {
    let mut fields = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            fields.insert(k.to_string(), v);
        }
    };
    if let Some(err) = &resp.error {
        put("cause", Some(err.cause.clone()));
        put("code", err.code.clone());
        put("message", err.message.clone());
        if err.cause == "INTERNAL_ERROR" {
            return Err(InquiryError::Transient(format!(
                "INTERNAL_ERROR {}",
                err.message.clone().unwrap_or_default()
            )));
        }
        return Ok(Report {
            source: Source::Poll,
            raw_status: format!("error:{}", err.cause),
            state: None,
            fields,
            learned_keys: vec![],
        });
    }
    let Some(state) = &resp.state else {
        return Err(InquiryError::Invalid(
            "answer has neither state nor error".into(),
        ));
    };
    put("bank_order_id", resp.bank_order_id.clone());
    put("order_id", resp.order_id.clone());
    put("redirect_url", resp.redirect_url.clone());
    put("error_code", resp.error_code.map(|c| c.to_string()));
    put("error_message", resp.error_message.clone());
    put("secure3d_auth_status", resp.secure3d_auth_status.clone());
    put(
        "random_sum_auth_status",
        resp.random_sum_auth_status.clone(),
    );
    if let Some(t) = &resp.transaction {
        put("amount_minor", t.amount_centis.map(|c| c.to_string()));
        put(
            "commission_minor",
            t.commission_centis.map(|c| c.to_string()),
        );
        put("order_created_date", t.order_created_date.clone());
        put(
            "transaction_created_date",
            t.transaction_created_date.clone(),
        );
    }
    if let Some(fees) = &resp.transfer_fee_list {
        put("transfer_fee_list", serde_json::to_string(fees).ok());
    }
    Ok(Report {
        source: Source::Poll,
        raw_status: state.clone(),
        state: map_state(state),
        fields,
        learned_keys: resp
            .order_id
            .iter()
            .map(|o| lookup_key(ID, "ord", o))
            .collect(),
    })
}
