//! Creating fraudstream's topics (the broker does not create them on first use).

use std::time::Duration;

use anyhow::Context as _;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use schemas::topics;

/// Every topic of the pipeline with its partition count.
pub fn standard(partitions: i32) -> Vec<(String, i32)> {
    [topics::TRANSACTIONS, topics::DECISIONS, topics::BUSINESS_EVENTS, topics::LABELS, topics::DRIFT_REPORTS, topics::TRANSACTIONS_DLQ]
        .into_iter()
        .map(|t| (t.to_string(), partitions))
        .collect()
}

/// Creates `topics` (name, partitions); topics that already exist are left as they are.
pub async fn create(brokers: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::client(brokers, &[]).create().context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, p)| NewTopic::new(name, *p, TopicReplication::Fixed(1))).collect();
    // A broker that cannot be reached is an error within seconds, not after librdkafka's minute.
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))).request_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &opts).await.with_context(|| format!("creating topics on the Kafka brokers {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Assigns every partition of `topic` to `consumer` (no consumer group), each starting at
/// `start`; returns how many there are. A topic without partitions is an error.
pub fn assign_all(consumer: &BaseConsumer, topic: &str, start: Offset, timeout: Duration) -> anyhow::Result<usize> {
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
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
