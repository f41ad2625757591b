"""Learning: models, the epoch engine, one fit, loaders, the time budget, several processes,
the training plan and defaults, inference and what averaging adds. No stage logic here."""
