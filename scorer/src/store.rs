//! The feature store: one Redis hash per user, read for a whole batch in one round trip. A store
//! that is down or slow never stops scoring: the batch is marked unavailable (the scorer falls
//! back to the card's defaults) and the store is retried after a short backoff.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use redis::{Client, Connection, Script};

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
#[derive(Debug)]
pub struct Fetched {
    pub lookups: Vec<UserLookup>,
    pub hits: u64,
    pub misses: u64,
    /// Why the store could not be read, when it could not.
    pub error: Option<String>,
    pub elapsed: Duration,
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

    fn connection(&mut self) -> redis::RedisResult<&mut Connection> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(self.timeout)?;
            conn.set_read_timeout(Some(self.timeout))?;
            conn.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(conn);
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
            return Fetched { lookups: Vec::new(), hits: 0, misses: 0, error: None, elapsed: started.elapsed() };
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return self.unavailable(n, "feature store unavailable (backing off)".into(), started);
        }
        let mut call = READ_USERS.prepare_invoke();
        let mut distinct: HashMap<&str, usize> = HashMap::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        for user in user_ids {
            let next = distinct.len();
            let slot = *distinct.entry(user).or_insert_with(|| {
                call.key(self.key(user));
                next
            });
            slots.push(slot);
        }
        call.arg(&UserFeatures::FIELDS[..]);
        let users = distinct.len();
        let result: redis::RedisResult<String> = self.connection().and_then(|conn| call.invoke(conn));
        match result {
            Ok(packed) => match unpack(&packed, users, &self.defaults) {
                Some(found) => {
                    self.retry_at = None;
                    let lookups = if users == n { found } else { slots.iter().map(|&s| found[s].clone()).collect() };
                    let hits = lookups.iter().filter(|l| matches!(l, UserLookup::Found(_))).count() as u64;
                    Fetched { lookups, hits, misses: n as u64 - hits, error: None, elapsed: started.elapsed() }
                }
                None => self.fail(n, format!("feature store answered a malformed reply for {users} users"), started),
            },
            Err(e) => self.fail(n, e.to_string(), started),
        }
    }

    fn fail(&mut self, n: usize, error: String, started: Instant) -> Fetched {
        // The connection may be half-read; start over with a fresh one after the backoff.
        self.conn = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.unavailable(n, error, started)
    }

    fn unavailable(&self, n: usize, error: String, started: Instant) -> Fetched {
        Fetched {
            lookups: vec![UserLookup::Unavailable; n],
            hits: 0,
            misses: 0,
            error: Some(error),
            elapsed: started.elapsed(),
        }
    }

    /// Writes users' features (used by `fraudctl features load` and tests), one pipeline.
    pub fn store<'a>(&mut self, users: impl IntoIterator<Item = (&'a str, &'a UserFeatures)>) -> redis::RedisResult<usize> {
        let mut pipe = redis::pipe();
        let mut count = 0;
        for (user_id, features) in users {
            let key = self.key(user_id);
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("HSET").arg(&key).arg(features.to_fields()).ignore();
            count += 1;
        }
        let conn = self.connection()?;
        pipe.query::<()>(conn)?;
        Ok(count)
    }
}

/// Splits the script's reply into one lookup per user; `None` when the reply has the wrong shape.
fn unpack(packed: &str, users: usize, defaults: &UserFeatures) -> Option<Vec<UserLookup>> {
    let k = UserFeatures::FIELDS.len();
    let mut values = packed.split(SEPARATOR);
    let mut lookups = Vec::with_capacity(users);
    let mut row: [&str; 6] = [""; 6];
    for _ in 0..users {
        for slot in row.iter_mut() {
            *slot = values.next()?;
        }
        if row.iter().all(|v| v.is_empty()) {
            lookups.push(UserLookup::Missing);
        } else {
            let fields = UserFeatures::FIELDS.iter().zip(row).filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, v));
            lookups.push(UserLookup::Found(UserFeatures::from_fields(fields, defaults)));
        }
    }
    debug_assert_eq!(k, row.len());
    values.next().is_none().then_some(lookups)
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
}
