"""The Optuna adapter: storages, worker liveness, and the only private Optuna names."""
