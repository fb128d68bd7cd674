"""Tooling for a developer's machine, the tests and the benchmarks; never imported by the worker or sink.

- `stack`: the local Kafka broker (KRaft) and redis-server, no Docker (`orderstream stack up|status|down`)
- `processes`: start and stop workers, sink and verifiers as daemons (demo, tests, benchmarks)
- `fake_orders`: the fake-order generator, realistic raw platform payloads with their expected fate
- `replay`: the Black Friday replay into a running pipeline, and the exact reconciliation after it
- `verifier_service`: a simulated external verifier service (payment, address) over real HTTP

The runtime (pipeline/ outside this package, agents/) never imports it; `orderstream`'s dev
commands import it inside the command. tests/unit/test_devtools_apart.py keeps it that way.
"""
