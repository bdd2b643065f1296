//! kcheck's reference Kafka broker: sans-IO protocol cores with thin tokio adapters.
