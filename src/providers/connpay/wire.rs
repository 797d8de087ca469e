//! ConnPay's wire format: the status request and answer as the seed
//! document spells them.

use super::*;

/// The status inquiry request body.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusRequest {
    pub session: RequestSession,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestSession {
    /// Only with "Optional consumer authentication" (seed 002); left out
    /// of the request when the payment was tracked without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    pub token: String,
}

/// The inquiry's answer: the success fields and the fail fields, all
/// optional, as the seed documents them.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<ResponseSession>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Required with APPROVED and DECLINED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_order_id: Option<String>,
    /// Required with REDIRECT_REQUEST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// The gateway's order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Transaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(
        default,
        rename = "secure3DAuthStatus",
        skip_serializing_if = "Option::is_none"
    )]
    pub secure3d_auth_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sum_auth_status: Option<String>,
    /// Only with TRANSFER_FEE_REQUEST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_fee_list: Option<Vec<TransferFee>>,
    /// Only in a fail answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FailError>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSession {
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_centis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commission_centis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_created_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_created_date: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferFee {
    pub assigned_id: String,
    /// The seed's example writes it as a string; both forms are read.
    #[serde(deserialize_with = "int_or_string")]
    pub commission_centis: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailError {
    pub cause: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

pub(super) fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        I(i64),
        S(String),
    }
    match IntOrString::deserialize(d)? {
        IntOrString::I(i) => Ok(i),
        IntOrString::S(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}
