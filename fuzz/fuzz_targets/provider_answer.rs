//! Every provider's JSON answer, read as payrecon reads it: byte 0 picks
//! the provider, byte 1 the HTTP status, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payrecon::model::Source;
use payrecon::providers::{connectfi, connpay, crm, myfatoorah, rest_status};
use reqwest::StatusCode;

fuzz_target!(|data: &[u8]| {
    let [which, code, body @ ..] = data else {
        return;
    };
    // 200-599, where 200 is the common case (byte 0xc8 and 0x00).
    let code = StatusCode::from_u16(200 + (*code as u16 * 3) % 400).unwrap_or(StatusCode::OK);
    match which % 5 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<connpay::StatusResponse>(body) {
                let _ = connpay::report_from(&r);
            }
        }
        1 => {
            if let Ok(env) = serde_json::from_slice::<myfatoorah::Envelope<myfatoorah::Invoice>>(body)
            {
                if let Some(inv) = env.data {
                    let _ = myfatoorah::report_from(&inv, Source::Poll, 0);
                    let _ = myfatoorah::report_from(&inv, Source::Poll, u64::MAX);
                }
            }
        }
        2 => {
            let _ = connectfi::read_answer(code, body, "Completed", true);
        }
        3 => {
            if let Ok(env) = crm::read_envelope(code, body) {
                let _ = crm::read_reject(code, &env);
            }
        }
        _ => {
            let _ = rest_status::read_answer(code, body, "completed");
        }
    }
});
