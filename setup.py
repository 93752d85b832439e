"""mcdaemon is plain Python: its metadata is in setup.cfg."""

from setuptools import setup

setup()
