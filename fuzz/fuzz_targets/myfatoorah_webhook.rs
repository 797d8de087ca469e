//! A MyFatoorah webhook body, verified as sent (no valid signature) and
//! then signed over its own signed text, so the reading after the HMAC
//! check runs too.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use payrecon::providers::myfatoorah::Myfatoorah;
use payrecon::providers::myfatoorah::webhook::{sign, signed_text, verify};
use payrecon::providers::{Provider, RawCallback};

const SECRET: &str = "fuzz-webhook-secret";

fn adapter() -> &'static Myfatoorah {
    static A: OnceLock<Myfatoorah> = OnceLock::new();
    A.get_or_init(|| {
        Myfatoorah::new(
            "http://127.0.0.1:9".into(),
            payrecon::config::Secret::new("fuzz-token"),
            Some(payrecon::config::Secret::new(SECRET)),
            Default::default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = verify(SECRET, None, data);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok((_, text)) = signed_text(&v) else {
        return;
    };
    let sig = sign(SECRET, &text);
    let _ = verify(SECRET, Some(&sig), data);
    let header = move |name: &str| (name == "MyFatoorah-Signature").then(|| sig.clone());
    let raw = RawCallback {
        method: "POST",
        query: "",
        body: data,
        header: &header,
    };
    let _ = adapter().parse_callback(&raw, 0);
});
