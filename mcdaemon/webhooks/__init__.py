"""Webhooks: the queue's worker that POSTs events (`delivery`) and the service's side that
turns stored changes into queued events and staff texts (`notify`)."""
