"""`python -m processor.bench`: throughput, ceiling, latency, restore and memory of the
processor, measured in one run on one broker (see `processor.bench.cli`)."""
