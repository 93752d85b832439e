"""The edges that talk to the world: AMI (panoramisk), SMPP (smpplib), FastAGI and the
classic AGI script, Prometheus over HTTP, sd_notify. They turn bytes into core's records and
back, and import core (and the config's types), never the store."""
