"""Domain primitives with no I/O: errors, messages, aggregates, the store protocol, sagas."""
