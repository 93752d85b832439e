"""The configuration: `reader` (typed YAML reading, key paths in errors), `model` (the frozen
dataclasses), `load` (reading and checking a file into a `Config`), and one module per
feature's section (`agi`, `contacts`, `outreach`, `webhooks`) that builds on `reader`."""
