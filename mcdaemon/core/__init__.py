"""The pipeline's rules, sans-IO: no asyncio, no sockets, no clock reads (time comes in as an
argument). Records, the call tracker, the policy, templates, SMS arithmetic, phone numbers,
opening hours, keywords, receipts' ids, the sender id, follow-up planning and the outbox's
retry rule. Imports nothing of mcdaemon but core and the config's model types."""
