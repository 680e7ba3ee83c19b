"""Host-independent core: model, ops, shot pipeline."""
