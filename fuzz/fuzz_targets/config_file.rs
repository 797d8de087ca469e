//! The config file, parsed and validated as `check-config` does, with
//! every secret it may name present in the environment.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: HashMap<String, String> = [
        "PAYRECON_CONNPAY_CONTROL_KEY",
        "PAYRECON_MYFATOORAH_TOKEN",
        "PAYRECON_MYFATOORAH_WEBHOOK_SECRET",
        "PAYRECON_REST_API_KEY",
        "PAYRECON_CONNECTFI_CLIENT_ID",
        "PAYRECON_CONNECTFI_CLIENT_SECRET",
        "PAYRECON_CRM_USERNAME",
        "PAYRECON_CRM_PASSWORD",
        "PAYRECON_ADMIN_TOKEN",
    ]
    .into_iter()
    .map(|k| (k.to_string(), "fuzz-secret-value".to_string()))
    .chain([(
        "PAYRECON_NOTIFY_SECRET".to_string(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
    )])
    .collect();
    let _ = payrecon::config::Config::parse("fuzz.toml", text, &env);
});
