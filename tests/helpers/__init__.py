"""What only the tests (and benchmarks) use: multi-process harnesses, run helpers and
export fixtures; not part of the sandbox's API."""
