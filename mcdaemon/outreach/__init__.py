"""Follow-up texts and call-back campaigns at run time: the I/O around `core.followups`."""
