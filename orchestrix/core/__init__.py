"""Domain primitives with no I/O: errors, messages, aggregates, the store protocol, sagas."""

__all__: list[str] = []  # its subpackages are what users import
