"""The KPI report: `kpis` computes it from the store's rows (sans-IO) and prints it; `html`
draws it."""
