"""Outbox to the world: leases queued messages, sends them, records every attempt."""
