//! The feature store: one Redis hash per user, read for a whole batch in one pipelined round
//! trip. A store that is down or slow never stops scoring: the batch is marked unavailable (the
//! scorer falls back to the card's defaults) and the store is retried after a short backoff.

use std::time::{Duration, Instant};

use redis::{Client, Connection};

use crate::features::{UserFeatures, UserLookup};

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

    /// Looks every user up in one pipelined round trip.
    pub fn fetch<'a>(&mut self, user_ids: impl ExactSizeIterator<Item = &'a str>) -> Fetched {
        let started = Instant::now();
        let n = user_ids.len();
        if n == 0 {
            return Fetched { lookups: Vec::new(), hits: 0, misses: 0, error: None, elapsed: started.elapsed() };
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return self.unavailable(n, "feature store unavailable (backing off)".into(), started);
        }
        let mut pipe = redis::pipe();
        for user in user_ids {
            pipe.cmd("HMGET").arg(self.key(user)).arg(&UserFeatures::FIELDS[..]);
        }
        let result: redis::RedisResult<Vec<Vec<Option<String>>>> =
            self.connection().and_then(|conn| pipe.query(conn));
        match result {
            Ok(rows) if rows.len() == n => {
                self.retry_at = None;
                let mut hits = 0;
                let lookups = rows
                    .iter()
                    .map(|row| {
                        if row.iter().all(Option::is_none) {
                            return UserLookup::Missing;
                        }
                        hits += 1;
                        let fields = UserFeatures::FIELDS
                            .iter()
                            .zip(row)
                            .filter_map(|(name, v)| v.as_deref().map(|v| (*name, v)));
                        UserLookup::Found(UserFeatures::from_fields(fields, &self.defaults))
                    })
                    .collect();
                Fetched { lookups, hits, misses: n as u64 - hits, error: None, elapsed: started.elapsed() }
            }
            Ok(rows) => self.fail(n, format!("feature store answered {} rows for {n} users", rows.len()), started),
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
