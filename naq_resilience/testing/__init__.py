"""Helpers for testing code that uses naq-resilience."""
