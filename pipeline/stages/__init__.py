"""The stages: one module per Make target, each with an entry `run(cfg)` (or the function the
stage table names). A stage never imports another stage: what two share lives a layer below."""
