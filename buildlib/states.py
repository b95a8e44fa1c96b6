"""The states of an engine: fresh, stale (built from other inputs), missing, blocked (needs another host)."""

FRESH, STALE, MISSING, BLOCKED = "fresh", "stale", "missing", "blocked"
