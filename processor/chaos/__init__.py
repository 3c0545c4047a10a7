"""The chaos run: the processor under overlapping faults, checked against ground truth.

Three `processor run` instances (subprocesses) process the simulator's world
(processor.simulation) on the three-node local cluster while the run kills and
restarts instances, scales them 1 -> 3 -> 1, stops the brokers that coordinate
the group and a transaction, and interleaves fuzzed records with the good
traffic. At the end it reads every output and dead letter (read_committed) and
checks them against the services' ground truth and the fuzzer's ledger.

    supervisor.py  the instances: start, SIGKILL, SIGTERM, unexpected exits
    faults.py      coordinator moves on the local cluster
    fuzz.py        bad records, each with the fate it must meet
    timeline.py    when what happens (a thread beside the simulation)
    recovery.py    from a SIGKILL until the victim's partitions publish again
    verdict.py     the final read and every check
    run.py         the whole run, its progress and its report
"""
