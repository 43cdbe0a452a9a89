"""Monthly budgets per owner and per label, and the cost report: from the store's own job records."""
