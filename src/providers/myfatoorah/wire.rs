//! MyFatoorah's wire format: the envelope, invoices and requests as the
//! seed document spells them.

use super::*;

/// The answer envelope of every MyFatoorah call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope<T> {
    pub is_success: bool,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub validation_errors: Option<Vec<ValidationError>>,
    #[serde(default = "none")]
    pub data: Option<T>,
}

pub(super) fn none<T>() -> Option<T> {
    None
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ValidationError {
    pub name: String,
    pub error: String,
}

/// `Data` of UpdatePaymentStatus and GetPaymentStatus.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Invoice {
    pub invoice_id: i64,
    pub invoice_status: String,
    pub invoice_reference: Option<String>,
    pub customer_reference: Option<String>,
    pub created_date: Option<String>,
    pub expiry_date: Option<String>,
    pub expiry_time: Option<String>,
    pub invoice_value: f64,
    pub comments: Option<String>,
    pub customer_name: Option<String>,
    pub customer_mobile: Option<String>,
    pub customer_email: Option<String>,
    pub user_defined_field: Option<String>,
    pub invoice_display_value: Option<String>,
    pub due_deposit: Option<f64>,
    pub deposit_status: Option<String>,
    pub invoice_items: Vec<serde_json::Value>,
    pub invoice_transactions: Vec<InvoiceTransaction>,
    pub suppliers: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InvoiceTransaction {
    pub transaction_date: Option<String>,
    pub payment_gateway: Option<String>,
    pub reference_id: Option<String>,
    pub track_id: Option<String>,
    pub transaction_id: Option<String>,
    pub payment_id: Option<String>,
    pub authorization_id: Option<String>,
    /// InProgress, Succss (sic), Failed, Authorize, Canceled.
    pub transaction_status: String,
    /// Spelled so by MyFatoorah.
    pub transation_value: Option<String>,
    pub customer_service_charge: Option<String>,
    pub total_service_charge: Option<String>,
    pub due_value: Option<String>,
    pub paid_currency: Option<String>,
    pub paid_currency_value: Option<String>,
    pub vat_amount: Option<String>,
    pub currency: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    /// Masked by MyFatoorah (450875xxxxxx1019); never logged.
    pub card_number: Option<String>,
}

/// The UpdatePaymentStatus request, field names as in the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateRequest {
    pub operation: String,
    pub amount: f64,
    pub key: String,
    pub key_type: String,
}

/// The GetPaymentStatus request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatusRequest {
    pub key: String,
    pub key_type: String,
}
