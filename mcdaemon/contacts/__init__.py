"""Contacts: who a caller is, for `{caller_name}` (imports, lookups, the cache in the store)."""
