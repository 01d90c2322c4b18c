"""Pure functions: plain values in, the text that lands on the host out; nothing here knows about Pulumi."""
