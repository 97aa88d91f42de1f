"""Adversary tests: seeded schedules of writers, faults and signals, judged by the audit.

One concern per module:

- `_model`: what a schedule is (writers, phases, operations, faults, signals) and its
  readable form;
- `_session`: the environment schedules run in (a sandbox whose keys belong to two
  people of one organisation, Redis, this machine's directories);
- `_writer`: one writer's flow run, in this process or in a process of its own;
- `_runner`: runs a schedule against a sandbox, over HTTP, through real Prefect flows;
- `_checker`: the promise (I1-I4), read from the sandbox's audit only, with the
  documented non-guarantees excused and said why;
- `_generator`: random schedules from a seed.

A package is used (this `__init__`) so that the modules import each other as
`adversary._name` from tests and from `benchmarks/adversary_soak.py` alike.
"""
