"""`python -m processor.bench`: throughput and its ceilings, latency, crash recovery,
memory, restore and index catch-up of the processor, measured in one run on one broker.

cli (order of the phases) -> session (the run's topics, groups, clean-up) -> one module
per phase: throughput, ceiling, latency, recovery, memory (with prefill), catchup; the
shared pieces: config, workload (every domain value built), kafka, process (`processor
run` as a process), sampling; output: report (table), figure (PNG)."""
