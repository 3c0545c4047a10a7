"""The exactly-once stateful runtime: consume, store, transact, retry.

It knows nothing of tickets and flights: an application plugs in a `Handler`
(see `handler.py`) that turns an input record and the key's stored state into
an `Outcome`.
"""
