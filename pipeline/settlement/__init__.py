"""Settlement reconciliation (issue 18): platform bills in, matched against the internal ledger in
ClickHouse, every difference classified, small ones written off by rule, the rest queued for a
person.

- bills.py:   the per-platform CSV layouts (schemas/settlement/) and import validation
- ledger.py:  what the internal ledger is made of (sources; SQL in the 0004 migration)
- rules.py:   the matching and write-off rules, as data (rules.yaml)
- engine.py:  matching and classification in ClickHouse SQL, the run's tables and JSON report
- queue.py:   the manual queue: open differences, resolutions by a named operator with a reason
"""
