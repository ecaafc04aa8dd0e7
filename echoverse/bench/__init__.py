"""The event-loop benchmark: C load generator, C reference server, Python targets on every loop."""
