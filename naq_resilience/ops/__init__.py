"""Floor 4: operations around failure (logging now; monitoring, alerts, incidents next)."""
