//! The feature store: one Redis hash per user, read for a whole batch in one round trip. A store
//! that is down or slow never stops scoring: the batch is marked unavailable (the scorer falls
//! back to the card's defaults) and the store is retried after a short backoff. A store that
//! answers but holds a user's record in a form that cannot be read (a key of another type, a
//! value with the reply's separator in it) costs that user's records their features, not the
//! batch's: the batch is read again user by user.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use redis::{Client, Connection, ErrorKind, Script, ServerErrorKind, Value};

use crate::features::{UserFeatures, UserLookup};

/// Reads the same fields of many user hashes server-side and answers with one string: every
/// value (empty when absent) separated by the ASCII unit separator, users one after the other.
/// One bulk string instead of seven RESP values per user: parsing the reply was most of the
/// scorer's per-record cost.
static READ_USERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {}
        for _, key in ipairs(KEYS) do
          local values = redis.call('HMGET', key, unpack(ARGV))
          for j = 1, #ARGV do
            local v = values[j]
            if v then out[#out + 1] = v else out[#out + 1] = '' end
          end
        end
        return table.concat(out, '\31')
        ",
    )
});

const SEPARATOR: char = '\u{1f}';

/// The same reads, answered user by user in RESP's own framing: each user's values, or the error
/// Redis gave for its key. Slower to parse; used for a batch whose packed reply could not be
/// read.
static READ_USERS_ONE_BY_ONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {}
        for i, key in ipairs(KEYS) do
          local values = redis.pcall('HMGET', key, unpack(ARGV))
          if values.err then out[i] = values.err else out[i] = values end
        end
        return out
        ",
    )
});

pub struct FeatureStore {
    client: Client,
    conn: Option<Connection>,
    key_prefix: String,
    timeout: Duration,
    backoff: Duration,
    retry_at: Option<Instant>,
    defaults: UserFeatures,
}

/// What one batch fetch found.
#[derive(Debug, Default)]
pub struct Fetched {
    pub lookups: Vec<UserLookup>,
    pub hits: u64,
    pub misses: u64,
    /// Why the store could not be read, when it could not.
    pub error: Option<String>,
    /// Records whose user's stored features could not be read (their lookups are `Unavailable`),
    /// and the first such key with the reason.
    pub unreadable: u64,
    pub unreadable_detail: Option<String>,
    pub elapsed: Duration,
}

/// One distinct user's answer from the store.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Lookup(UserLookup),
    /// The key holds something that is not a readable feature hash; why.
    Unreadable(String),
}

impl FeatureStore {
    /// `timeout` bounds connecting and each round trip; after a failure the store is left alone
    /// for `backoff`.
    pub fn new(
        url: &str,
        key_prefix: impl Into<String>,
        timeout: Duration,
        backoff: Duration,
        defaults: UserFeatures,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            client: Client::open(url)?,
            conn: None,
            key_prefix: key_prefix.into(),
            timeout,
            backoff,
            retry_at: None,
            defaults,
        })
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.key_prefix)
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let conn = self.client.get_connection_with_timeout(self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }

    fn connection(&mut self) -> redis::RedisResult<&mut Connection> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        Ok(self.conn.as_mut().expect("connection was just set"))
    }

    /// Looks every user up in one round trip; answers one lookup per id given, in order. Each
    /// distinct user is read once, however often it appears in the batch: a burst of payments
    /// from one user (card testing) costs the store one lookup.
    pub fn fetch<'a>(&mut self, user_ids: impl ExactSizeIterator<Item = &'a str>) -> Fetched {
        let started = Instant::now();
        let n = user_ids.len();
        if n == 0 {
            return Fetched { elapsed: started.elapsed(), ..Fetched::default() };
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return self.unavailable(n, "feature store unavailable (backing off)".into(), started);
        }
        let mut keys = Vec::with_capacity(n);
        let mut distinct: HashMap<&str, usize> = HashMap::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        for user in user_ids {
            let slot = *distinct.entry(user).or_insert_with(|| {
                keys.push(self.key(user));
                keys.len() - 1
            });
            slots.push(slot);
        }
        let answers = match self.read(&keys) {
            Ok(answers) => answers,
            Err(e) => return self.fail(n, e, started),
        };
        self.retry_at = None;
        let mut fetched = Fetched { lookups: Vec::with_capacity(n), ..Fetched::default() };
        let mut record = |slot: usize, answer: Answer| {
            let lookup = match answer {
                Answer::Lookup(l) => l,
                Answer::Unreadable(why) => {
                    fetched.unreadable += 1;
                    fetched.unreadable_detail.get_or_insert_with(|| format!("key `{}`: {why}", keys[slot]));
                    UserLookup::Unavailable
                }
            };
            match lookup {
                UserLookup::Found(_) => fetched.hits += 1,
                UserLookup::Missing => fetched.misses += 1,
                UserLookup::Unavailable => {}
            }
            fetched.lookups.push(lookup);
        };
        if answers.len() == n {
            answers.into_iter().enumerate().for_each(|(slot, a)| record(slot, a));
        } else {
            slots.iter().for_each(|&slot| record(slot, answers[slot].clone()));
        }
        fetched.elapsed = started.elapsed();
        fetched
    }

    /// One answer per key: from the packed reply, or, when Redis answered but that reply could not
    /// be read, from the one-by-one reads. `Err` when the store did not answer.
    fn read(&mut self, keys: &[String]) -> Result<Vec<Answer>, String> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect().map_err(|e| e.to_string())?,
        };
        let mut call = READ_USERS.prepare_invoke();
        call.key(keys).arg(&UserFeatures::FIELDS[..]);
        let packed = match call.invoke::<String>(&mut conn) {
            Ok(packed) => unpack(&packed, keys.len(), &self.defaults).ok_or_else(|| "a value holds the reply's separator".to_string()),
            Err(e) if answered(&e) => Err(e.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let answers = match packed {
            Ok(lookups) => lookups.into_iter().map(Answer::Lookup).collect(),
            Err(why) => {
                tracing::debug!(%why, users = keys.len(), "packed feature reply unreadable; reading the batch user by user");
                let mut call = READ_USERS_ONE_BY_ONE.prepare_invoke();
                call.key(keys).arg(&UserFeatures::FIELDS[..]);
                let reply = call.invoke::<Value>(&mut conn).map_err(|e| e.to_string())?;
                one_by_one(reply, keys.len(), &self.defaults).ok_or_else(|| format!("feature store answered a malformed reply for {} users", keys.len()))?
            }
        };
        self.conn = Some(conn);
        Ok(answers)
    }

    fn fail(&mut self, n: usize, error: String, started: Instant) -> Fetched {
        // The connection may be half-read; start over with a fresh one after the backoff.
        self.conn = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.unavailable(n, error, started)
    }

    fn unavailable(&self, n: usize, error: String, started: Instant) -> Fetched {
        Fetched { lookups: vec![UserLookup::Unavailable; n], error: Some(error), elapsed: started.elapsed(), ..Fetched::default() }
    }

    /// Writes users' features (used by `fraudctl features load` and tests), one pipeline. Each
    /// user's hash is replaced in a `MULTI`/`EXEC` of its own: a scorer reading meanwhile sees
    /// the old features or the new, never the user missing between the delete and the write.
    pub fn store<'a>(&mut self, users: impl IntoIterator<Item = (&'a str, &'a UserFeatures)>) -> redis::RedisResult<usize> {
        let mut pipe = redis::pipe();
        let mut count = 0;
        for (user_id, features) in users {
            let key = self.key(user_id);
            pipe.cmd("MULTI").ignore();
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("HSET").arg(&key).arg(features.to_fields()).ignore();
            pipe.cmd("EXEC").ignore();
            count += 1;
        }
        let conn = self.connection()?;
        pipe.query::<()>(conn)?;
        Ok(count)
    }
}

/// Whether Redis itself answered `e` (the script failed on a key, say), as opposed to not
/// answering: the connection is still in step and the store is up.
fn answered(e: &redis::RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::Extension)
}

/// A user's lookup from the values of their hash's fields, in `UserFeatures::FIELDS` order
/// (empty when absent).
fn lookup_of(row: [&str; 6], defaults: &UserFeatures) -> UserLookup {
    if row.iter().all(|v| v.is_empty()) {
        return UserLookup::Missing;
    }
    let fields = UserFeatures::FIELDS.iter().zip(row).filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, v));
    UserLookup::Found(UserFeatures::from_fields(fields, defaults))
}

/// Splits the script's reply into one lookup per user; `None` when the reply has the wrong shape.
fn unpack(packed: &str, users: usize, defaults: &UserFeatures) -> Option<Vec<UserLookup>> {
    let mut values = packed.split(SEPARATOR);
    let mut lookups = Vec::with_capacity(users);
    let mut row: [&str; 6] = [""; 6];
    for _ in 0..users {
        for slot in row.iter_mut() {
            *slot = values.next()?;
        }
        lookups.push(lookup_of(row, defaults));
    }
    debug_assert_eq!(UserFeatures::FIELDS.len(), row.len());
    values.next().is_none().then_some(lookups)
}

/// Reads the one-by-one script's reply: per user, the fields' values (nil when absent) or the
/// error its key gave. A value that is not UTF-8 reads as unparseable (the default is used).
fn one_by_one(reply: Value, users: usize, defaults: &UserFeatures) -> Option<Vec<Answer>> {
    let Value::Array(items) = reply else { return None };
    if items.len() != users {
        return None;
    }
    let text = |v: &Value| match v {
        Value::Nil => Some(String::new()),
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    items
        .iter()
        .map(|item| match item {
            Value::Array(values) if values.len() == UserFeatures::FIELDS.len() => {
                let owned: Vec<String> = values.iter().map(text).collect::<Option<_>>()?;
                let row: [&str; 6] = std::array::from_fn(|i| owned[i].as_str());
                Some(Answer::Lookup(lookup_of(row, defaults)))
            }
            Value::BulkString(why) => Some(Answer::Unreadable(String::from_utf8_lossy(why).into_owned())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> UserFeatures {
        UserFeatures { account_age_days: 1.0, txn_count_1h: 2.0, txn_count_24h: 3.0, avg_amount_30d: 4.0, chargebacks_90d: 5.0, home_country: None }
    }

    #[test]
    fn unpacks_found_missing_and_partial_users() {
        let sep = SEPARATOR.to_string();
        let packed = ["10", "0", "4", "55.5", "1", "US", "", "", "", "", "", "", "", "7", "", "", "", ""].join(&sep);
        let lookups = unpack(&packed, 3, &defaults()).unwrap();
        let UserLookup::Found(a) = &lookups[0] else { panic!() };
        assert_eq!((a.account_age_days, a.avg_amount_30d, a.home_country.as_deref()), (10.0, 55.5, Some("US")));
        assert_eq!(lookups[1], UserLookup::Missing);
        let UserLookup::Found(c) = &lookups[2] else { panic!() };
        assert_eq!((c.account_age_days, c.txn_count_1h), (1.0, 7.0), "absent fields take the defaults");
    }

    #[test]
    fn malformed_replies_are_refused() {
        assert!(unpack("1", 1, &defaults()).is_none(), "too few values");
        let sep = SEPARATOR.to_string();
        assert!(unpack(&["1"; 7].join(&sep), 1, &defaults()).is_none(), "too many values");
    }

    #[test]
    fn reads_the_one_by_one_reply() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let row = |age: Value| Value::Array(vec![age, Value::Nil, Value::Nil, bulk("60"), Value::Nil, bulk("fr")]);
        let reply = Value::Array(vec![row(bulk("9")), bulk("WRONGTYPE Operation against a key holding the wrong kind of value"), Value::Array(vec![Value::Nil; 6])]);
        let answers = one_by_one(reply, 3, &defaults()).unwrap();
        let found = UserFeatures { account_age_days: 9.0, avg_amount_30d: 60.0, home_country: Some("FR".into()), ..defaults() };
        assert_eq!(answers[0], Answer::Lookup(UserLookup::Found(found)));
        assert!(matches!(&answers[1], Answer::Unreadable(why) if why.starts_with("WRONGTYPE")));
        assert_eq!(answers[2], Answer::Lookup(UserLookup::Missing));

        assert!(one_by_one(Value::Array(vec![row(bulk("9"))]), 2, &defaults()).is_none(), "too few users");
        assert!(one_by_one(Value::Array(vec![Value::Array(vec![Value::Nil; 5])]), 1, &defaults()).is_none(), "too few values");
        assert!(one_by_one(Value::Array(vec![row(Value::Int(3))]), 1, &defaults()).is_none(), "a value that is not a string");
        assert!(one_by_one(bulk("x"), 1, &defaults()).is_none(), "not an array");
    }
}
