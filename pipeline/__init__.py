"""From raw competition files to a validated Kaggle submission."""

from pipeline.errors import PipelineError

__all__ = ["PipelineError"]
