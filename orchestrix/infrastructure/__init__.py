"""Store backends, each behind the one EventStore protocol."""

__all__: list[str] = []  # its subpackages are what users import
