"""The ack path (claim, or local dedup while the store cannot decide) and the handler runner."""
