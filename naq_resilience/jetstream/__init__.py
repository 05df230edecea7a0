"""The NATS JetStream job layer: connection, embedded server, and the job machinery."""
