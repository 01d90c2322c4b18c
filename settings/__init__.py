"""The stack settings: one validated object, loaded once."""
