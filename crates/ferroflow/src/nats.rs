//! The NATS JetStream context (under construction).
