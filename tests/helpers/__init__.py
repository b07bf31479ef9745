"""What only tests and benchmarks use (not part of the sandbox's API)."""
