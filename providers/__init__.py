"""Dynamic providers the program's components use (code that runs inside the engine, not on the host)."""
