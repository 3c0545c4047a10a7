"""The simulated world: ticket and flight services speaking the saga's Avro topics."""
