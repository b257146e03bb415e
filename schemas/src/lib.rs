//! fraudstream's records as they travel on Kafka: the Avro schemas, their Rust types, the
//! Schema Registry wire codec, and the names of topics and headers that every service shares.

mod codec;
pub mod codes;
mod fast;
mod first_seen;
mod payment;
mod records;
mod validate;

pub use codec::{Record, SchemaId, decode, encode, encode_into, peek_schema_id, schema_text};
pub use first_seen::{FirstSeen, PrehashedState, RecentMap};
pub use payment::Payment;
pub use records::{
    BusinessEvent, BusinessEventKind, Decision, DriftBin, DriftReport, DriftSeverity,
    FeatureContribution, FeatureValue, Label, PaymentMethod, RiskLevel, Transaction, Verdict,
};
pub use validate::{FieldError, TransactionLimits};

/// Topic names, one place for every service.
pub mod topics {
    pub const TRANSACTIONS: &str = "transactions";
    pub const DECISIONS: &str = "decisions";
    pub const BUSINESS_EVENTS: &str = "business-events";
    pub const LABELS: &str = "labels";
    pub const DRIFT_REPORTS: &str = "drift-reports";
    pub const TRANSACTIONS_DLQ: &str = "transactions.dlq";
}

/// Record header names.
pub mod headers {
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// Dead-letter headers: the reason in words and its kind (`decode`, `schema`, `validation`).
    pub const ERROR: &str = "error";
    pub const ERROR_KIND: &str = "error.kind";
    pub const SOURCE_TOPIC: &str = "source.topic";
    pub const SOURCE_PARTITION: &str = "source.partition";
    pub const SOURCE_OFFSET: &str = "source.offset";
}

/// Why a record could not be turned into a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("record is {0} bytes, shorter than the 5-byte Schema Registry header")]
    TooShort(usize),
    #[error("record starts with magic byte {0}, expected 0 (Schema Registry wire format)")]
    BadMagic(u8),
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    #[error("schema id {found} is a {found_name}, expected a {expected}")]
    WrongSchema { expected: &'static str, found: u32, found_name: &'static str },
    #[error("Avro body does not match the {schema} schema: {source}")]
    Avro {
        schema: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{trailing} bytes left after the {schema} record")]
    TrailingBytes { schema: &'static str, trailing: usize },
    #[error("cannot encode {schema}: {source}")]
    Encode {
        schema: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
}

impl Error {
    /// The dead-letter `error.kind` for this error: `decode` for bytes that are not a record at
    /// all, `schema` for a schema id this reader does not know or expect.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnknownSchemaId(_) | Error::WrongSchema { .. } => "schema",
            _ => "decode",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Now, as the records' `timestamp-millis` (milliseconds since the Unix epoch).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
