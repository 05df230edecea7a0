"""Floor 3: the NATS JetStream job layer (streams, client, worker, stores, server)."""
