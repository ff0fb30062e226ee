"""Background and operator work on top of storage: import from other registries."""
