"""Speed benchmarks: throughput and peak memory, printed (never asserted in tests)."""
