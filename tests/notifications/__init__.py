"""Tests of the notifications base."""
