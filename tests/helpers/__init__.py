"""What only the tests (and benchmarks) use: multi-process harnesses and run helpers."""
