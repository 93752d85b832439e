"""Stand-ins for the world, for the demo and the tests: an AMI server that replays real
recordings (`recordings/`, package data) and an SMSC simulator."""
