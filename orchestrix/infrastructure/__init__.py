"""Store backends, each behind the one EventStore protocol."""
