//! Creating fraudstream's topics (the broker does not create them on first use): how many
//! partitions, how many copies of each, and the topic settings a cluster operator chooses.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use schemas::topics;
use telemetry::kafka::LoggingContext;

/// Copies of each partition when the replication factor is not given: three (so that one broker
/// can be lost while `min.insync.replicas` 2 still accepts writes), or one per broker on a
/// smaller cluster.
pub const DEFAULT_REPLICAS: i32 = 3;

/// How long the cluster has to answer a metadata request or a topic creation.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Every topic of the pipeline with its partition count.
pub fn standard(partitions: i32) -> Vec<(String, i32)> {
    [topics::TRANSACTIONS, topics::DECISIONS, topics::BUSINESS_EVENTS, topics::LABELS, topics::DRIFT_REPORTS, topics::TRANSACTIONS_DLQ]
        .into_iter()
        .map(|t| (t.to_string(), partitions))
        .collect()
}

/// The replication factor of the topics to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// [`DEFAULT_REPLICAS`], or as many as the cluster has brokers if it has fewer.
    Auto,
    Fixed(i32),
}

impl FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            n => match n.parse::<i32>() {
                Ok(n) if n >= 1 => Ok(Self::Fixed(n)),
                _ => Err(format!("`{s}` is neither `auto` nor a number of copies >= 1")),
            },
        }
    }
}

/// A topic setting (`retention.ms=604800000`), for every topic created or (`decisions:retention.ms=...`)
/// for one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSetting {
    pub topic: Option<String>,
    pub key: String,
    pub value: String,
}

impl FromStr for TopicSetting {
    type Err = String;

    /// `[TOPIC:]KEY=VALUE` (topic names cannot contain `:`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s.split_once('=').ok_or_else(|| format!("`{s}` is not [TOPIC:]KEY=VALUE"))?;
        let (topic, key) = match name.split_once(':') {
            Some((topic, key)) => (Some(topic.trim().to_string()), key.trim()),
            None => (None, name.trim()),
        };
        let value = value.trim();
        if key.is_empty() || value.is_empty() || topic.as_deref() == Some("") {
            return Err(format!("`{s}` is not [TOPIC:]KEY=VALUE"));
        }
        Ok(Self { topic, key: key.to_string(), value: value.to_string() })
    }
}

/// What to create: the topics with their partition counts, their replication and settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topics: Vec<(String, i32)>,
    pub replication: Replication,
    pub settings: Vec<TopicSetting>,
}

impl Plan {
    /// `topics` with the replication chosen for the cluster and no settings of their own.
    pub fn new(topics: Vec<(String, i32)>) -> Self {
        Self { topics, replication: Replication::Auto, settings: Vec::new() }
    }

    /// Refuses a setting for a topic the plan does not create (a typo would otherwise be lost).
    pub fn check(&self) -> anyhow::Result<()> {
        for s in &self.settings {
            if let Some(topic) = &s.topic {
                anyhow::ensure!(
                    self.topics.iter().any(|(t, _)| t == topic),
                    "--config {topic}:{}: no topic {topic} among {}",
                    s.key,
                    self.topics.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(())
    }

    /// Copies of each partition on a cluster of `brokers` brokers.
    pub fn replication_factor(&self, brokers: usize) -> anyhow::Result<i32> {
        let brokers = i32::try_from(brokers).unwrap_or(i32::MAX);
        match self.replication {
            Replication::Auto => Ok(DEFAULT_REPLICAS.min(brokers).max(1)),
            Replication::Fixed(n) if n <= brokers => Ok(n),
            Replication::Fixed(n) => anyhow::bail!(
                "--replication-factor {n}: the cluster has {}, and each copy of a partition needs its own",
                count(brokers, "broker")
            ),
        }
    }

    /// The settings `topic` is created with: the plan's for every topic, then its own (which win),
    /// and `min.insync.replicas` 2 when it has three copies or more and none was given — with
    /// the producers' `acks=all`, an accepted record is then on two brokers at least.
    pub fn settings_for(&self, topic: &str, replication: i32) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let general = self.settings.iter().filter(|s| s.topic.is_none());
        let own = self.settings.iter().filter(|s| s.topic.as_deref() == Some(topic));
        for s in general.chain(own) {
            match out.iter_mut().find(|(k, _)| *k == s.key) {
                Some(kv) => kv.1 = s.value.clone(),
                None => out.push((s.key.clone(), s.value.clone())),
            }
        }
        if replication >= 3 && !out.iter().any(|(k, _)| k == "min.insync.replicas") {
            out.push(("min.insync.replicas".to_string(), "2".to_string()));
        }
        out
    }
}

/// What became of one topic of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created { topic: String, partitions: i32, replication: i32, settings: Vec<(String, String)> },
    /// There already; left as it is. Its partitions and copies as the cluster reports them
    /// (`None` if it appeared between the metadata request and the creation).
    Exists { topic: String, asked_partitions: i32, found: Option<(i32, i32)> },
}

impl Outcome {
    pub fn topic(&self) -> &str {
        match self {
            Self::Created { topic, .. } | Self::Exists { topic, .. } => topic,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created { topic, partitions, replication, settings } => {
                write!(f, "topic {topic}: created, {}, {} each", count(*partitions, "partition"), count(*replication, "copy"))?;
                if !settings.is_empty() {
                    let s: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, ", {}", s.join(", "))?;
                }
                Ok(())
            }
            Self::Exists { topic, asked_partitions, found: Some((partitions, replication)) } => {
                write!(f, "topic {topic}: exists with {}, {} each; left as it is", count(*partitions, "partition"), count(*replication, "copy"))?;
                if partitions != asked_partitions {
                    write!(f, " (not the {asked_partitions} partitions asked for)")?;
                }
                Ok(())
            }
            Self::Exists { topic, .. } => write!(f, "topic {topic}: exists (created meanwhile); left as it is"),
        }
    }
}

/// `1 copy`, `3 copies`; `1 partition`, `6 partitions`.
fn count(n: i32, what: &str) -> String {
    match (n, what.strip_suffix('y')) {
        (1, _) => format!("1 {what}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {what}s"),
    }
}

/// Creates `topics` (name, partitions) with the replication chosen for the cluster; topics that
/// already exist are left as they are.
pub async fn create(brokers: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    apply(brokers, &Plan::new(topics.to_vec())).await.map(drop)
}

/// Creates the topics of `plan` that the cluster does not have yet and says what became of each.
pub async fn apply(brokers: &str, plan: &Plan) -> anyhow::Result<Vec<Outcome>> {
    plan.check()?;
    let context = || format!("creating topics on the Kafka brokers {brokers}");
    let metadata = {
        let config = crate::kafka::client(brokers, &[]);
        tokio::task::spawn_blocking(move || -> anyhow::Result<Metadata> {
            let consumer: BaseConsumer<LoggingContext> = config.create_with_context(LoggingContext::default()).context("creating a Kafka client")?;
            Ok(telemetry::kafka::fetch_metadata(&consumer, None, ADMIN_TIMEOUT)?)
        })
        .await
        .context("reading the cluster's metadata")?
        .with_context(context)?
    };
    let replication = plan.replication_factor(metadata.brokers().len())?;
    let existing = |topic: &str| {
        metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| {
            let copies = t.partitions().iter().map(|p| p.replicas().len()).max().unwrap_or(0);
            (i32::try_from(t.partitions().len()).unwrap_or(i32::MAX), i32::try_from(copies).unwrap_or(i32::MAX))
        })
    };

    let mut outcomes: Vec<Outcome> = Vec::with_capacity(plan.topics.len());
    // The topics to create, as they will be once created.
    let mut new: Vec<Outcome> = Vec::new();
    for (topic, partitions) in &plan.topics {
        let (topic, partitions) = (topic.clone(), *partitions);
        match existing(&topic) {
            Some(found) => outcomes.push(Outcome::Exists { topic, asked_partitions: partitions, found: Some(found) }),
            None => {
                let settings = plan.settings_for(&topic, replication);
                new.push(Outcome::Created { topic, partitions, replication, settings });
            }
        }
    }
    if new.is_empty() {
        return Ok(outcomes);
    }
    let (admin, opts) = admin(brokers)?;
    let requests: Vec<NewTopic<'_>> = new
        .iter()
        .filter_map(|o| match o {
            Outcome::Created { topic, partitions, replication, settings } => Some(
                settings.iter().fold(NewTopic::new(topic, *partitions, TopicReplication::Fixed(*replication)), |t, (k, v)| t.set(k, v)),
            ),
            Outcome::Exists { .. } => None,
        })
        .collect();
    let results = admin.create_topics(&requests, &opts).await.with_context(context)?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                for planned in new.iter_mut().filter(|o| o.topic() == name) {
                    if let Outcome::Created { topic, partitions, .. } = planned {
                        *planned = Outcome::Exists { topic: std::mem::take(topic), asked_partitions: *partitions, found: None };
                    }
                }
            }
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    outcomes.extend(new);
    // In the plan's order, whatever the cluster's.
    outcomes.sort_by_key(|o| plan.topics.iter().position(|(t, _)| t == o.topic()));
    Ok(outcomes)
}

/// An admin client of `brokers` and the options its requests go with: a broker that cannot be
/// reached is an error within seconds, not after librdkafka's minute.
fn admin(brokers: &str) -> anyhow::Result<(AdminClient<LoggingContext>, AdminOptions)> {
    let admin = crate::kafka::create(brokers, &[]).context("creating the Kafka admin client")?;
    Ok((admin, AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT))))
}

/// Deletes `topics`; one that is already gone is not an error.
pub async fn delete(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    let (admin, opts) = admin(brokers)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let results = admin.delete_topics(&names, &opts).await.with_context(|| format!("deleting topics {} on {brokers}", names.join(", ")))?;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => None,
            Err((name, code)) => Some(format!("{name}: {code}")),
        })
        .collect();
    anyhow::ensure!(failed.is_empty(), "cannot delete topics ({})", failed.join("; "));
    Ok(())
}

/// Assigns every partition of `topic` to `consumer` (no consumer group, nothing assigned yet),
/// each starting at `start`; returns how many there are. A topic without partitions is an error.
pub fn assign_all<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, start: Offset, timeout: Duration) -> anyhow::Result<usize> {
    let md = telemetry::kafka::fetch_metadata(consumer, Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), start)?;
        }
    }
    anyhow::ensure!(tpl.count() > 0, "topic {topic} has no partitions");
    consumer.assign(&tpl)?;
    Ok(tpl.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(s: &str) -> TopicSetting {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn settings_are_read_for_every_topic_or_one() {
        assert_eq!(setting("retention.ms=604800000"), TopicSetting { topic: None, key: "retention.ms".into(), value: "604800000".into() });
        assert_eq!(
            setting(" decisions : retention.ms = 1 "),
            TopicSetting { topic: Some("decisions".into()), key: "retention.ms".into(), value: "1".into() }
        );
        for bad in ["retention.ms", "=1", "retention.ms=", ":retention.ms=1", "decisions:=1"] {
            let e = bad.parse::<TopicSetting>().unwrap_err();
            assert!(e.contains("[TOPIC:]KEY=VALUE"), "{bad}: {e}");
        }
    }

    #[test]
    fn replication_is_auto_or_a_positive_number() {
        assert_eq!("auto".parse(), Ok(Replication::Auto));
        assert_eq!("3".parse(), Ok(Replication::Fixed(3)));
        for bad in ["0", "-1", "three", ""] {
            assert!(bad.parse::<Replication>().unwrap_err().contains("auto"), "{bad}");
        }
    }

    #[test]
    fn auto_replication_is_three_copies_or_one_per_broker() {
        let mut plan = Plan::new(standard(2));
        assert_eq!(plan.replication_factor(1).unwrap(), 1);
        assert_eq!(plan.replication_factor(2).unwrap(), 2);
        assert_eq!(plan.replication_factor(3).unwrap(), 3);
        assert_eq!(plan.replication_factor(9).unwrap(), 3);
        plan.replication = Replication::Fixed(2);
        assert_eq!(plan.replication_factor(5).unwrap(), 2);
        let e = plan.replication_factor(1).unwrap_err().to_string();
        assert!(e.contains("--replication-factor 2") && e.contains("1 broker,"), "{e}");
    }

    #[test]
    fn a_topics_own_settings_win_and_three_copies_get_two_in_sync() {
        let mut plan = Plan::new(standard(2));
        plan.settings = ["retention.ms=1000", "decisions:retention.ms=2000", "labels:cleanup.policy=compact", "segment.ms=60000"]
            .map(setting)
            .to_vec();
        let kv = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(plan.settings_for("decisions", 1), kv(&[("retention.ms", "2000"), ("segment.ms", "60000")]));
        assert_eq!(plan.settings_for("transactions", 1), kv(&[("retention.ms", "1000"), ("segment.ms", "60000")]));
        assert_eq!(
            plan.settings_for("labels", 3),
            kv(&[("retention.ms", "1000"), ("segment.ms", "60000"), ("cleanup.policy", "compact"), ("min.insync.replicas", "2")])
        );
        plan.settings.push(setting("min.insync.replicas=3"));
        let given = plan.settings_for("labels", 4);
        assert_eq!(given.iter().filter(|(k, _)| k == "min.insync.replicas").collect::<Vec<_>>(), [&("min.insync.replicas".to_string(), "3".to_string())]);
        assert!(plan.check().is_ok());
        plan.settings.push(setting("decision:retention.ms=1"));
        let e = plan.check().unwrap_err().to_string();
        assert!(e.contains("no topic decision among transactions, decisions"), "{e}");
    }

    #[test]
    fn outcomes_say_what_was_done() {
        let created = Outcome::Created {
            topic: "decisions".into(),
            partitions: 6,
            replication: 3,
            settings: vec![("min.insync.replicas".into(), "2".into())],
        };
        assert_eq!(created.to_string(), "topic decisions: created, 6 partitions, 3 copies each, min.insync.replicas=2");
        let exists = Outcome::Exists { topic: "labels".into(), asked_partitions: 6, found: Some((2, 1)) };
        assert_eq!(exists.to_string(), "topic labels: exists with 2 partitions, 1 copy each; left as it is (not the 6 partitions asked for)");
        let same = Outcome::Exists { topic: "labels".into(), asked_partitions: 2, found: Some((2, 1)) };
        assert_eq!(same.to_string(), "topic labels: exists with 2 partitions, 1 copy each; left as it is");
    }
}
