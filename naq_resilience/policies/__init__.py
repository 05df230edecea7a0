"""Floor 1: resilience policies in pure Python, usable with no broker at all."""
