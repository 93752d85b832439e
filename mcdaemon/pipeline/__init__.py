"""The pipeline's stages, one module each; `mcdaemon.service` builds, connects and runs them.

`intake` (AMI → tracker), `deciding` (the one decider: policy → store, for calls seen live,
adopted or backfilled), `sending` (the dispatcher and the submit results), `receiving`
(receipts and replies), `housekeeping` (the once-a-second work), `backfill` (each PBX's
queue_log read for its blind window at each AMI connect), `heartbeat` (this daemon's row
among those sharing the store, and its share of the throughput). Each stage holds only its own
state and is given what it needs; none imports `service`.
"""
