"""The pipeline's stages, one module each; `mcdaemon.service` builds, connects and runs them.

`intake` (AMI → tracker → policy → store), `sending` (the dispatcher and the submit results),
`receiving` (receipts and replies), `housekeeping` (the once-a-second work). Each stage holds
only its own state and is given what it needs; none imports `service`.
"""
