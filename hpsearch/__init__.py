"""hpsearch: systematic, resumable, inspectable hyperparameter searches on daily stock bars."""

__version__ = "0.1.0"
