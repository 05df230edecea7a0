"""naq-resilience: background jobs that survive the real world."""
