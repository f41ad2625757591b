"""The Kaggle side: the CLI wrapper, submission files and the ledger, and what the packaged
notebook runs offline."""
