"""mcdaemon: texts back the callers an Asterisk PBX missed."""

__version__ = "0.1.0"
