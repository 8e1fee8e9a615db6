"""mailveil: a masked e-mail relay for marketplaces."""
