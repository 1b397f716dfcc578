"""Self-configuration: what the data is and what the machine can do, turned into a training plan."""
