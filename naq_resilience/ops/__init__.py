"""Floor 4: operations around failure: logging, alert rules, sinks and the monitor,
incidents."""
