"""The KPI report: `kpis` builds it from the store's aggregates and texted callers (sans-IO)
and prints it; `html` draws it."""
