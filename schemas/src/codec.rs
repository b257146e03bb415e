//! The Confluent Schema Registry wire format: magic byte 0, a 4-byte big-endian schema id,
//! then the Avro binary body. Without a registry, the ids are the fixed ones in `KNOWN`.

use std::io::Cursor;
use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fast::WriteAvro;
use crate::records::{BusinessEvent, Decision, DriftReport, Label, Transaction};
use crate::{Error, Result};

/// A schema id as it appears in the wire format.
pub type SchemaId = u32;

const MAGIC: u8 = 0;
pub(crate) const HEADER_LEN: usize = 5;
/// Largest string, array or bytes length a record may declare; guards against corrupt lengths.
const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Every schema this build can read: (id, record name, schema text). A new version of a schema
/// takes a new id and is appended here; old ids stay readable.
const KNOWN: &[(SchemaId, &str, &str)] = &[
    (1, "Transaction", include_str!("../avro/transaction.avsc")),
    (2, "Decision", include_str!("../avro/decision.avsc")),
    (3, "BusinessEvent", include_str!("../avro/business_event.avsc")),
    (4, "Label", include_str!("../avro/label.avsc")),
    (5, "DriftReport", include_str!("../avro/drift_report.avsc")),
];

struct Registered {
    id: SchemaId,
    name: &'static str,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

static SCHEMAS: LazyLock<Vec<Schema>> = LazyLock::new(|| {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    KNOWN
        .iter()
        .map(|(id, name, text)| {
            Schema::parse_str(text)
                .unwrap_or_else(|e| panic!("bundled schema {name} (id {id}) does not parse: {e}"))
        })
        .collect()
});

static REGISTRY: LazyLock<Vec<Registered>> = LazyLock::new(|| {
    KNOWN
        .iter()
        .zip(SCHEMAS.iter())
        .map(|(&(id, name, _), schema)| Registered {
            id,
            name,
            // Serde-driven writes are checked against the schema as they go.
            writer: GenericDatumWriter::builder(schema)
                .validate(false)
                .human_readable(false)
                .build()
                .unwrap_or_else(|e| panic!("bundled schema {name} does not resolve: {e}")),
            reader: GenericDatumReader::builder(schema)
                .human_readable(false)
                .build()
                .unwrap_or_else(|e| panic!("bundled schema {name} does not resolve: {e}")),
        })
        .collect()
});

/// A type that travels as an Avro record.
pub trait Record: Serialize + DeserializeOwned {
    /// The Avro record name, as in the `.avsc` file.
    const NAME: &'static str;
    /// The id new records are written with.
    const SCHEMA_ID: SchemaId;

    /// Writes the Avro body with a hand-written writer, for hot-path records; `false` means
    /// "use apache-avro".
    fn write_body(&self, _out: &mut Vec<u8>) -> bool {
        false
    }

    /// Reads the Avro body (written with `SCHEMA_ID`) with a hand-written reader, for hot-path
    /// records; `None` means "use apache-avro", which also reports what is wrong with a bad body.
    fn read_body(_body: &[u8]) -> Option<Self> {
        None
    }
}

impl Record for Transaction {
    const NAME: &'static str = "Transaction";
    const SCHEMA_ID: SchemaId = 1;
    fn write_body(&self, out: &mut Vec<u8>) -> bool {
        self.write_avro(out);
        true
    }
    fn read_body(body: &[u8]) -> Option<Self> {
        crate::fast::ReadAvro::read_avro(body)
    }
}
impl Record for Decision {
    const NAME: &'static str = "Decision";
    const SCHEMA_ID: SchemaId = 2;
    fn write_body(&self, out: &mut Vec<u8>) -> bool {
        self.write_avro(out);
        true
    }
}
impl Record for BusinessEvent {
    const NAME: &'static str = "BusinessEvent";
    const SCHEMA_ID: SchemaId = 3;
    fn write_body(&self, out: &mut Vec<u8>) -> bool {
        self.write_avro(out);
        true
    }
}
impl Record for Label {
    const NAME: &'static str = "Label";
    const SCHEMA_ID: SchemaId = 4;
}
impl Record for DriftReport {
    const NAME: &'static str = "DriftReport";
    const SCHEMA_ID: SchemaId = 5;
}

fn registered(id: SchemaId) -> Option<&'static Registered> {
    REGISTRY.iter().find(|r| r.id == id)
}

/// The schema id in a record's header, without decoding the body.
pub fn peek_schema_id(bytes: &[u8]) -> Result<SchemaId> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(Error::BadMagic(bytes[0]));
    }
    Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

/// Encodes `record` in the wire format, appending to `out` (which is not cleared).
pub fn encode_into<T: Record>(record: &T, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.push(MAGIC);
    out.extend_from_slice(&T::SCHEMA_ID.to_be_bytes());
    if record.write_body(out) {
        return Ok(());
    }
    out.truncate(start);
    encode_with_apache_avro_into(record, out)
}

fn encode_with_apache_avro_into<T: Record>(record: &T, out: &mut Vec<u8>) -> Result<()> {
    let reg = registered(T::SCHEMA_ID).unwrap_or_else(|| {
        panic!("{} writes schema id {} which is not in KNOWN", T::NAME, T::SCHEMA_ID)
    });
    let start = out.len();
    out.push(MAGIC);
    out.extend_from_slice(&T::SCHEMA_ID.to_be_bytes());
    reg.writer.write_ser(out, record).map_err(|e| {
        out.truncate(start);
        Error::Encode { schema: T::NAME, source: Box::new(e) }
    })?;
    Ok(())
}

/// The wire bytes as apache-avro's serializer writes them (the reference for the fast writers).
#[cfg(test)]
pub(crate) fn encode_with_apache_avro<T: Record>(record: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_with_apache_avro_into(record, &mut out)?;
    Ok(out)
}

/// Encodes `record` in the wire format.
pub fn encode<T: Record>(record: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    encode_into(record, &mut out)?;
    Ok(out)
}

/// Decodes one record of type `T`. Unknown ids, ids of other record types, corrupt bodies and
/// trailing bytes are errors, never panics.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T> {
    if peek_schema_id(bytes).is_ok_and(|id| id == T::SCHEMA_ID)
        && let Some(record) = T::read_body(&bytes[HEADER_LEN..])
    {
        return Ok(record);
    }
    decode_with_apache_avro(bytes)
}

/// `decode` without the hand-written readers.
pub(crate) fn decode_with_apache_avro<T: Record>(bytes: &[u8]) -> Result<T> {
    let id = peek_schema_id(bytes)?;
    let reg = registered(id).ok_or(Error::UnknownSchemaId(id))?;
    if reg.name != T::NAME {
        return Err(Error::WrongSchema { expected: T::NAME, found: id, found_name: reg.name });
    }
    let mut body = Cursor::new(&bytes[HEADER_LEN..]);
    let record = reg
        .reader
        .read_deser::<T>(&mut body)
        .map_err(|e| Error::Avro { schema: T::NAME, source: Box::new(e) })?;
    let trailing = bytes.len() - HEADER_LEN - body.position() as usize;
    if trailing != 0 {
        return Err(Error::TrailingBytes { schema: T::NAME, trailing });
    }
    Ok(record)
}

/// The text of the schema registered under `id`, e.g. to register it with a Schema Registry.
pub fn schema_text(id: SchemaId) -> Option<&'static str> {
    KNOWN.iter().find(|(i, _, _)| *i == id).map(|(_, _, text)| *text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::*;

    fn transaction() -> Transaction {
        Transaction {
            transaction_id: "txn_demo_001".into(),
            user_id: "12345".into(),
            amount: 149.99,
            currency: "USD".into(),
            payment_method: PaymentMethod::BankTransfer,
            merchant_id: Some("merchant_42".into()),
            country: None,
            timestamp: 1_764_000_000_123,
        }
    }

    fn decision() -> Decision {
        Decision {
            transaction_id: "t1".into(),
            user_id: "u1".into(),
            decision: Verdict::Review,
            fraud_probability: 0.42,
            risk_level: RiskLevel::Medium,
            model_version: "1.0.0".into(),
            features: vec![FeatureValue { name: "amount_log".into(), value: 5.0 }],
            top_features: vec![FeatureContribution {
                name: "amount_log".into(),
                value: 5.0,
                contribution: 1.25,
            }],
            degraded: true,
            user_features_found: false,
            amount: 149.99,
            currency: "EUR".into(),
            payment_method: PaymentMethod::Crypto,
            transaction_timestamp: 1,
            decided_at: 2,
            processing_latency_ms: 0.5,
        }
    }

    #[test]
    fn every_bundled_schema_parses() {
        assert_eq!(SCHEMAS.len(), KNOWN.len());
        for (id, name, _) in KNOWN {
            assert!(registered(*id).is_some(), "{name}");
            assert!(schema_text(*id).is_some_and(|t| t.contains(name)));
        }
    }

    #[test]
    fn transaction_round_trips_with_wire_header() {
        let t = transaction();
        let bytes = encode(&t).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 1]);
        assert_eq!(decode::<Transaction>(&bytes).unwrap(), t);
    }

    #[test]
    fn every_record_type_round_trips() {
        let d = decision();
        assert_eq!(decode::<Decision>(&encode(&d).unwrap()).unwrap(), d);
        let b = BusinessEvent {
            transaction_id: "t".into(),
            user_id: "u".into(),
            kind: BusinessEventKind::FraudBlocked,
            amount: 10.0,
            currency: "USD".into(),
            model_version: "1".into(),
            timestamp: 3,
        };
        assert_eq!(decode::<BusinessEvent>(&encode(&b).unwrap()).unwrap(), b);
        let l = Label { transaction_id: "t".into(), is_fraud: true, labelled_at: 9 };
        assert_eq!(decode::<Label>(&encode(&l).unwrap()).unwrap(), l);
        let r = DriftReport {
            model_version: "1".into(),
            feature: "amount_log".into(),
            window_start: 0,
            window_end: 300_000,
            samples: 500,
            psi: 0.3,
            severity: DriftSeverity::Significant,
            bins: vec![DriftBin { label: "(-inf, 1]".into(), expected: 0.1, actual: 0.2, count: 100 }],
        };
        assert_eq!(decode::<DriftReport>(&encode(&r).unwrap()).unwrap(), r);
    }

    /// The body must be plain Avro binary that a generic reader of the `.avsc` understands, so
    /// that tools speaking Schema Registry can read the topics.
    #[test]
    fn body_is_readable_by_a_generic_avro_reader() {
        use apache_avro::types::Value;
        let bytes = encode(&transaction()).unwrap();
        let schema = Schema::parse_str(KNOWN[0].2).unwrap();
        let value = GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[5..])
            .unwrap();
        let Value::Record(fields) = value else { panic!("not a record: {value:?}") };
        assert_eq!(fields[0], ("transaction_id".into(), Value::String("txn_demo_001".into())));
        assert_eq!(fields[4].1, Value::Enum(1, "bank_transfer".into()));
        assert_eq!(fields[5].1, Value::Union(1, Box::new(Value::String("merchant_42".into()))));
        assert_eq!(fields[7].1, Value::TimestampMillis(1_764_000_000_123));
    }

    #[test]
    fn short_and_bad_magic_are_typed_errors() {
        assert!(matches!(decode::<Transaction>(&[]), Err(Error::TooShort(0))));
        assert!(matches!(decode::<Transaction>(&[0, 0, 0]), Err(Error::TooShort(3))));
        assert!(matches!(decode::<Transaction>(b"{\"json\":1}"), Err(Error::BadMagic(b'{'))));
    }

    #[test]
    fn unknown_and_foreign_schema_ids_are_schema_errors() {
        let mut bytes = encode(&transaction()).unwrap();
        bytes[1..5].copy_from_slice(&99u32.to_be_bytes());
        let err = decode::<Transaction>(&bytes).unwrap_err();
        assert!(matches!(err, Error::UnknownSchemaId(99)));
        assert_eq!(err.kind(), "schema");

        let label = encode(&Label { transaction_id: "t".into(), is_fraud: false, labelled_at: 0 }).unwrap();
        let err = decode::<Transaction>(&label).unwrap_err();
        assert!(matches!(err, Error::WrongSchema { found: 4, .. }), "{err}");
    }

    #[test]
    fn truncated_and_trailing_bodies_are_decode_errors() {
        let bytes = encode(&transaction()).unwrap();
        for cut in 5..bytes.len() {
            let err = decode::<Transaction>(&bytes[..cut]).unwrap_err();
            assert_eq!(err.kind(), "decode", "cut at {cut}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<Transaction>(&longer), Err(Error::TrailingBytes { trailing: 1, .. })));
    }

    #[test]
    fn corrupt_bodies_never_panic() {
        let bytes = encode(&decision()).unwrap();
        // Flip every bit of every body byte in turn, and a run of huge varints: each must decode or
        // fail with an error, never panic or allocate without bound.
        for i in 5..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = decode::<Decision>(&b);
            }
        }
        let mut huge = bytes[..5].to_vec();
        huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode::<Decision>(&huge).is_err());
    }

    #[test]
    fn bad_enum_symbol_index_is_an_error() {
        let card = encode(&Transaction { payment_method: PaymentMethod::Card, ..transaction() }).unwrap();
        let wallet = encode(&Transaction { payment_method: PaymentMethod::Wallet, ..transaction() }).unwrap();
        let pos = (0..card.len()).find(|&i| card[i] != wallet[i]).unwrap();
        let mut bytes = card.clone();
        bytes[pos] = 40; // zig-zag 20: no such symbol
        assert!(decode::<Transaction>(&bytes).is_err());
    }
}
