"""Data sets: generators/adapters that write ``data/<split>.csv`` and torch datasets reading it."""
