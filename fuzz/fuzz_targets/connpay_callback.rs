//! ConnPay's callback as it arrives (a query string, or a form POST),
//! first as sent, then re-signed so the code past the `control` check runs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use payrecon::providers::connpay::{control, Connpay};
use payrecon::providers::{no_headers, Provider, RawCallback};

const KEY: &str = "fuzz-control-key";

fn adapter() -> &'static Connpay {
    static A: OnceLock<Connpay> = OnceLock::new();
    A.get_or_init(|| {
        Connpay::new(
            "http://127.0.0.1:9".into(),
            payrecon::config::Secret::new(KEY),
            Default::default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 1 { "POST" } else { "GET" };
    let text = String::from_utf8_lossy(rest);
    let raw = RawCallback {
        method,
        query: &text,
        body: rest,
        header: &no_headers,
    };
    let _ = adapter().parse_callback(&raw, 0);

    // The same parameters with a valid control.
    let params: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
        .filter(|(k, _)| k != "control")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let c = control(get("status"), get("orderid"), get("client_orderid"), KEY);
    let mut signed = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        signed.append_pair(k, v);
    }
    let signed = signed.append_pair("control", &c).finish();
    let raw = RawCallback {
        method: "GET",
        query: &signed,
        body: b"",
        header: &no_headers,
    };
    let _ = adapter().parse_callback(&raw, 0);
});
