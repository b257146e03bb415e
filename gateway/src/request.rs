//! The `POST /v1/predict` body: parsed field by field so that a bad request is answered with
//! every bad field and its reason at once, not just the first.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use schemas::{FieldError, PaymentMethod, Transaction, TransactionLimits};

/// A request body read as a JSON object: its top-level members (the last value of a key given
/// more than once) and the keys it gives more than once, each named once, in the order they
/// repeat. The JSON parser keeps the last value, while another reader of the same bytes (a proxy,
/// an audit log, the client's own logs) may take the first: a payment that says two things is
/// refused, not guessed at.
#[derive(Debug)]
pub struct Object {
    pub body: Map<String, Value>,
    pub repeated: Vec<String>,
}

/// Why a body is no JSON object to read fields from (a 400).
#[derive(Debug)]
pub enum BodyError {
    Malformed(serde_json::Error),
    NotAnObject,
}

/// Reads a request body in one pass. A body the parser refuses only because top-level fields
/// hold numbers beyond a double's range (`"amount": 1e400`) is read with each such number
/// replaced by the largest double of its sign, so that the field checks refuse it by name (a 422
/// like any other absurd value, rather than a 400 for the whole body); deeper in the body such a
/// number leaves it malformed.
pub fn read_object(bytes: &[u8]) -> Result<Object, BodyError> {
    match serde_json::from_slice::<Members<Value>>(bytes) {
        Ok(m) => Ok(Object { body: m.values.into_iter().collect(), repeated: m.repeated }),
        // Valid JSON of another type, or malformed JSON that does not start as an object.
        Err(e) if e.classify() == serde_json::error::Category::Data => match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Err(BodyError::NotAnObject),
            Err(e) => Err(BodyError::Malformed(e)),
        },
        Err(e) => with_huge_numbers_clamped(bytes).ok_or(BodyError::Malformed(e)),
    }
}

/// A JSON object's top-level members as `V`s, and its keys given more than once.
struct Members<V> {
    values: std::collections::BTreeMap<String, V>,
    repeated: Vec<String>,
}

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for Members<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, Visitor};
        struct Of<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> Visitor<'de> for Of<V> {
            type Value = Members<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<V>, A::Error> {
                let mut m = Members { values: std::collections::BTreeMap::new(), repeated: Vec::new() };
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<V>()?;
                    if m.values.contains_key(&key) && !m.repeated.contains(&key) {
                        m.repeated.push(key.clone());
                    }
                    m.values.insert(key, value);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Of(std::marker::PhantomData))
    }
}

/// The body read with top-level numbers beyond a double's range clamped (see [`read_object`]);
/// `None` for any other malformed body, and for such numbers nested deeper (unless a key is given
/// twice: that is the answer then).
fn with_huge_numbers_clamped(bytes: &[u8]) -> Option<Object> {
    let raw: Members<Box<serde_json::value::RawValue>> = serde_json::from_slice(bytes).ok()?;
    let mut clamped = false;
    let mut body = Map::new();
    for (key, raw) in raw.values {
        let text = raw.get();
        let value = match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            // The raw value is valid JSON: one that does not parse is a number out of range.
            Err(_) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                clamped = true;
                Value::from(if text.starts_with('-') { -f64::MAX } else { f64::MAX })
            }
            Err(_) => return None,
        };
        body.insert(key, value);
    }
    // A key given twice is refused by name whatever it held: its earlier value, the number out of
    // range, is not kept to be clamped.
    (clamped || !raw.repeated.is_empty()).then_some(Object { body, repeated: raw.repeated })
}

/// How far ahead of the gateway's clock a transaction's timestamp may be.
pub const MAX_AHEAD_MS: i64 = 24 * 3_600_000;

/// The least timestamp taken as a number: 2001-01-01T00:00:00Z in epoch milliseconds. A smaller
/// number is epoch seconds given for milliseconds (today's seconds read as milliseconds fall in
/// January 1970), which would put the payment at the wrong hour. An RFC 3339 string says its date
/// outright, so it is not held to this.
pub const MIN_EPOCH_MS: i64 = 978_307_200_000;

/// Turns a JSON object into a `Transaction`, or lists what is wrong with it. `now_ms` is the
/// time of receipt, used when the request carries no timestamp.
pub fn parse_transaction(
    body: &Map<String, Value>,
    limits: &TransactionLimits,
    now_ms: i64,
) -> Result<Transaction, Vec<FieldError>> {
    let mut errors = Vec::new();

    let transaction_id = required_string(body, "transaction_id", &mut errors);
    let user_id = match body.get("user_id") {
        None | Some(Value::Null) => missing(&mut errors, "user_id"),
        Some(Value::String(s)) => Some(s.clone()),
        // The seed's clients send numeric user ids; their text is the id.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        // Integers past 64 bits reach here as doubles, their digits already rounded; every
        // integer above u64::MAX rounds to 2^64 or more, every one below i64::MIN to -2^63 or less.
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= u64::MAX as f64 || f <= i64::MIN as f64) => {
            wrong(&mut errors, "user_id", "is too large for a numeric id: send it as a string")
        }
        Some(_) => wrong(&mut errors, "user_id", "must be a string or an integer"),
    };
    let amount = match body.get("amount") {
        None | Some(Value::Null) => missing(&mut errors, "amount"),
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => wrong(&mut errors, "amount", "must be a number"),
    };
    let payment_method = match body.get("payment_method") {
        None | Some(Value::Null) => missing(&mut errors, "payment_method"),
        Some(Value::String(s)) => PaymentMethod::parse(s).or_else(|| {
            wrong(&mut errors, "payment_method", "must be one of card, bank_transfer, wallet, crypto")
        }),
        Some(_) => wrong(&mut errors, "payment_method", "must be a string"),
    };
    let merchant_id = optional_string(body, "merchant_id", &mut errors);
    let currency = optional_string(body, "currency", &mut errors).unwrap_or_else(|| "USD".into());
    let country = optional_string(body, "country", &mut errors);
    let timestamp = match body.get("timestamp") {
        None | Some(Value::Null) => Some(now_ms),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) if t < MIN_EPOCH_MS => wrong(
                &mut errors,
                "timestamp",
                "as a number must be epoch milliseconds from 2001-01-01 on (a smaller number is most likely epoch seconds)",
            ),
            Some(t) => Some(t),
            None => wrong(&mut errors, "timestamp", "must be whole milliseconds since the Unix epoch"),
        },
        // RFC 3339's date-time, as JSON Schema and the API's spec define it: a `T` between date
        // and time (the parser would also take a space).
        Some(Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) if matches!(s.as_bytes().get(10), Some(b'T' | b't')) => Some((t.unix_timestamp_nanos() / 1_000_000) as i64),
            _ => wrong(&mut errors, "timestamp", "must be RFC 3339 (2026-01-15T14:30:00Z) or epoch milliseconds"),
        },
        Some(_) => wrong(&mut errors, "timestamp", "must be an RFC 3339 string or epoch milliseconds"),
    };
    // Clocks differ by seconds, time zones by hours; a day or more ahead is a mistake, most
    // often epoch micro- or nanoseconds given for milliseconds.
    let timestamp = match timestamp {
        Some(t) if t > now_ms.saturating_add(MAX_AHEAD_MS) => wrong(
            &mut errors,
            "timestamp",
            "must not be more than 24 hours ahead of the gateway's clock (epoch milliseconds, not micro- or nanoseconds)",
        ),
        t => t,
    };

    // Contract checks (empty ids, amount range, codes) run on every field that did parse, even
    // when others did not, so that one answer names every bad field. A field that failed to
    // parse has a stand-in value here whose own check is not reported.
    let parsed = [transaction_id.is_some(), user_id.is_some(), amount.is_some(), payment_method.is_some(), timestamp.is_some()];
    let tx = Transaction {
        transaction_id: transaction_id.unwrap_or_default(),
        user_id: user_id.unwrap_or_default(),
        amount: amount.unwrap_or(1.0),
        currency,
        payment_method: payment_method.unwrap_or(PaymentMethod::Card),
        merchant_id,
        country,
        timestamp: timestamp.unwrap_or(now_ms),
    };
    let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
    errors.extend(tx.field_errors(limits).into_iter().filter(|e| !reported.contains(&e.field)));
    if errors.is_empty() && parsed.iter().all(|p| *p) { Ok(tx) } else { Err(errors) }
}

fn missing<T>(errors: &mut Vec<FieldError>, field: &str) -> Option<T> {
    errors.push(FieldError::new(field, "is required"));
    None
}

fn wrong<T>(errors: &mut Vec<FieldError>, field: &str, reason: &str) -> Option<T> {
    errors.push(FieldError::new(field, reason));
    None
}

fn required_string(body: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => missing(errors, field),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => wrong(errors, field, "must be a string"),
    }
}

fn optional_string(body: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => wrong(errors, field, "must be a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// When the requests of these tests are received: after the times they carry.
    const RECEIVED: i64 = 1_800_000_000_000;

    fn parse(v: Value) -> Result<Transaction, Vec<FieldError>> {
        parse_transaction(v.as_object().unwrap(), &TransactionLimits::default(), RECEIVED)
    }

    fn bad_fields(v: Value) -> Vec<String> {
        parse(v).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_timestamp_a_day_ahead_of_the_clock_is_refused() {
        let now = 1_768_483_800_250;
        let at = |t: Value| {
            let mut v = json!({"transaction_id": "t", "user_id": 1, "amount": 1, "payment_method": "card"});
            v["timestamp"] = t;
            parse_transaction(v.as_object().unwrap(), &TransactionLimits::default(), now)
        };
        assert_eq!(at(json!(now + MAX_AHEAD_MS)).unwrap().timestamp, now + MAX_AHEAD_MS);
        assert_eq!(at(json!("2026-01-16T13:30:00.250Z")).unwrap().timestamp, now + MAX_AHEAD_MS);
        for ahead in [json!(now + MAX_AHEAD_MS + 1), json!(now * 1_000), json!("2026-01-16T13:30:00.251Z"), json!("9999-12-31T23:59:59Z")] {
            let errors = at(ahead.clone()).unwrap_err();
            assert_eq!(errors.len(), 1, "{ahead}: {errors:?}");
            assert!(errors[0].field == "timestamp" && errors[0].reason.contains("24 hours ahead"), "{ahead}: {errors:?}");
        }
        assert!(at(json!("1970-01-01T00:00:00Z")).is_ok(), "a date written out is the sender's to say");
    }

    #[test]
    fn a_number_too_small_for_epoch_milliseconds_is_refused() {
        let at = |t: Value| {
            let mut v = json!({"transaction_id": "t", "user_id": 1, "amount": 1, "payment_method": "card"});
            v["timestamp"] = t;
            parse(v)
        };
        assert_eq!(at(json!(MIN_EPOCH_MS)).unwrap().timestamp, 978_307_200_000);
        assert_eq!(at(json!("2000-12-31T23:59:59.999Z")).unwrap().timestamp, MIN_EPOCH_MS - 1);
        // Epoch seconds of 2026-01-15, then the last millisecond of 2000, 0 and before 1970.
        for small in [json!(1_768_483_800i64), json!(MIN_EPOCH_MS - 1), json!(0), json!(-1)] {
            let errors = at(small.clone()).unwrap_err();
            assert_eq!(errors.len(), 1, "{small}: {errors:?}");
            assert!(errors[0].field == "timestamp" && errors[0].reason.contains("epoch seconds"), "{small}: {errors:?}");
        }
    }

    #[test]
    fn keys_given_twice_are_found_once_each() {
        let repeated_keys = |bytes: &[u8]| read_object(bytes).unwrap().repeated;
        assert_eq!(repeated_keys(br#"{"amount": 10, "user_id": 1, "amount": 20, "amount": 30}"#), ["amount"]);
        assert_eq!(repeated_keys(br#"{"b": 1, "a": 2, "a": 3, "b": 4}"#), ["a", "b"]);
        assert_eq!(repeated_keys(br#"{"amount": 1, "amount": 1e400, "x": {"y": 1, "y": 2}}"#), ["amount"], "top level only; a number out of range too");
        assert_eq!(repeated_keys(br#"{"amount": 1e400, "amount": 1}"#), ["amount"], "the number out of range given first");
        assert_eq!(repeated_keys(br#"{"a\u0062": 1, "ab": 2}"#), ["ab"], "keys compare unescaped");
        assert!(repeated_keys(br#"{"amount": 10, "user_id": 1}"#).is_empty());
        assert_eq!(read_object(br#"{"amount": 10, "amount": 20}"#).unwrap().body["amount"], json!(20), "the last value, as the parser keeps it");
    }

    #[test]
    fn a_body_that_is_no_object_is_told_apart_from_a_malformed_one() {
        for not_an_object in [&b"[1, 1]"[..], b"7", b"\"x\"", b"null"] {
            assert!(matches!(read_object(not_an_object), Err(BodyError::NotAnObject)), "{}", String::from_utf8_lossy(not_an_object));
        }
        for malformed in [&b"{\"a\": "[..], b"", b"[1, 2", b"{\"a\": 1} x", b"1e400"] {
            assert!(matches!(read_object(malformed), Err(BodyError::Malformed(_))), "{}", String::from_utf8_lossy(malformed));
        }
    }

    #[test]
    fn numbers_beyond_a_double_are_refused_by_field_not_as_malformed_json() {
        let body = br#"{"transaction_id": "t", "user_id": 1e400, "amount": -1e999, "payment_method": "card", "note": [1, {"a": 2}]}"#;
        assert!(serde_json::from_slice::<Value>(body).is_err(), "the JSON parser refuses the whole body");
        let clamped = with_huge_numbers_clamped(body).unwrap().body;
        assert_eq!(clamped["user_id"], json!(f64::MAX));
        assert_eq!(clamped["amount"], json!(-f64::MAX));
        assert_eq!(clamped["note"], json!([1, {"a": 2}]));
        let errors = parse_transaction(&clamped, &TransactionLimits::default(), 1_000).unwrap_err();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.reason.as_str())).collect();
        assert_eq!(got, [("user_id", "is too large for a numeric id: send it as a string"), ("amount", "must be > 0")]);
        let huge = with_huge_numbers_clamped(br#"{"transaction_id": "t", "user_id": 1, "amount": 1e400, "payment_method": "card"}"#).unwrap().body;
        let errors = parse_transaction(&huge, &TransactionLimits::default(), 1_000).unwrap_err();
        assert_eq!((errors[0].field.as_str(), errors[0].reason.as_str()), ("amount", "must be at most 1000000"));
        // Anything else stays malformed: deeper, truncated, not an object, or nothing out of range.
        for other in [&br#"{"amount": [1e400]}"#[..], br#"{"amount": 1e400"#, b"[1e400]", br#"{"amount": 5}"#, b"1e400"] {
            assert!(with_huge_numbers_clamped(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn the_seed_request_parses_with_defaults() {
        let tx = parse(json!({
            "transaction_id": "txn_demo_001",
            "user_id": 12345,
            "amount": 149.99,
            "payment_method": "card",
            "merchant_id": "merchant_42"
        }))
        .unwrap();
        assert_eq!(tx.user_id, "12345");
        assert_eq!(tx.currency, "USD");
        assert_eq!(tx.timestamp, RECEIVED, "time of receipt");
        assert_eq!(tx.country, None);
        assert_eq!(tx.payment_method, PaymentMethod::Card);
    }

    #[test]
    fn numeric_user_ids_are_taken_within_64_bits_and_refused_clearly_beyond() {
        let with = |raw: &str| {
            let body = format!(r#"{{"transaction_id": "t", "user_id": {raw}, "amount": 1, "payment_method": "card"}}"#);
            parse(serde_json::from_str(&body).unwrap())
                .map(|tx| tx.user_id)
                .map_err(|e| e.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>())
        };
        assert_eq!(with("18446744073709551615"), Ok("18446744073709551615".to_string()));
        assert_eq!(with("-42"), Ok("-42".to_string()));
        assert_eq!(with("123456789012345678901234"), Err(vec!["user_id: is too large for a numeric id: send it as a string".to_string()]));
        assert_eq!(with("12.5"), Err(vec!["user_id: must be a string or an integer".to_string()]));
        assert_eq!(with("1e3"), Err(vec!["user_id: must be a string or an integer".to_string()]));
        // The bounds are the exact edges of the 64-bit ranges, not a rounded literal.
        assert_eq!(with("18446744073709551616"), Err(vec!["user_id: is too large for a numeric id: send it as a string".to_string()]));
        assert_eq!(with("-9223372036854775808"), Ok("-9223372036854775808".to_string()));
        assert_eq!(with("-9223372036854775809"), Err(vec!["user_id: is too large for a numeric id: send it as a string".to_string()]));
        assert_eq!(with("1e19"), Err(vec!["user_id: must be a string or an integer".to_string()]));
    }

    #[test]
    fn timestamps_in_rfc3339_and_epoch_ms() {
        let base = json!({"transaction_id": "t", "user_id": "u", "amount": 1, "payment_method": "wallet"});
        let mut v = base.clone();
        v["timestamp"] = json!("2026-01-15T14:30:00.250+01:00");
        assert_eq!(parse(v).unwrap().timestamp, 1_768_483_800_250);
        let mut v = base.clone();
        v["timestamp"] = json!(1_768_483_800_250i64);
        assert_eq!(parse(v).unwrap().timestamp, 1_768_483_800_250);
        for not_rfc3339 in ["yesterday", "2026-01-15 14:30:00Z", "2026-01-15T14:30:00"] {
            let mut v = base.clone();
            v["timestamp"] = json!(not_rfc3339);
            assert_eq!(bad_fields(v), ["timestamp"], "{not_rfc3339}");
        }
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let errors = parse(json!({
            "user_id": 1.5,
            "amount": "12",
            "payment_method": "cheque",
            "currency": 840
        }))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["transaction_id", "user_id", "amount", "payment_method", "currency"]);
        assert_eq!(errors[0].reason, "is required");
        assert!(errors[3].reason.contains("card, bank_transfer"));
    }

    #[test]
    fn contract_checks_apply_to_the_fields_that_parsed_when_others_did_not() {
        let errors = parse(json!({"transaction_id": "", "amount": -1, "country": "usa", "currency": 1})).unwrap_err();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.reason.as_str())).collect();
        assert_eq!(
            got,
            [
                ("user_id", "is required"),
                ("payment_method", "is required"),
                ("currency", "must be a string"),
                ("transaction_id", "must not be empty"),
                ("amount", "must be > 0"),
                ("country", "must be an ISO 3166-1 alpha-2 country code such as US"),
            ]
        );
    }

    #[test]
    fn contract_checks_apply_after_parsing() {
        let base = json!({"transaction_id": "t", "user_id": "u", "payment_method": "card"});
        for (amount, reason) in [(json!(-5), "must be > 0"), (json!(0), "must be > 0"), (json!(1e12), "must be at most 1000000")] {
            let mut v = base.clone();
            v["amount"] = amount;
            let errs = parse(v).unwrap_err();
            assert_eq!(errs, [FieldError::new("amount", reason)]);
        }
        let mut v = base;
        v["amount"] = json!(10);
        v["country"] = json!("usa");
        assert_eq!(bad_fields(v), ["country"]);
    }
}
