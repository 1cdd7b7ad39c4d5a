//! Topic creation (idempotent) through the admin API.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::RDKafkaErrorCode,
};
use shadowtap_core::KafkaSettings;

/// Create `topics` with `partitions` each unless they exist. `compacted` ones get
/// `cleanup.policy=compact`.
pub async fn ensure_topics(
    kafka: &KafkaSettings,
    topics: &[(&str, bool)],
    partitions: i32,
) -> Result<(), rdkafka::error::KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config(&[]).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, compacted)| {
            let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(rdkafka::error::KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, ?code, "topic creation failed");
                });
            }
        }
    }
    Ok(())
}
