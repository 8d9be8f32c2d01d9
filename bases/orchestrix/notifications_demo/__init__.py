"""Notifications demo: multi-channel delivery with retries, exponential backoff and a dead letter queue."""
