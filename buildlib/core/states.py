"""The states of an engine: fresh, stale (built from other inputs), missing, blocked (needs another host), and,
as `doit plan` shows them, unvalidated (built, but its required validation failed or never ran) and regressed
(validated, but measured slower than the engine it replaced, beyond the model's perf_gate)."""

FRESH, STALE, MISSING, BLOCKED, UNVALIDATED = "fresh", "stale", "missing", "blocked", "unvalidated"
REGRESSED = "regressed"
