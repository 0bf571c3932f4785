"""vidcls: two-stage video classification."""
__version__ = "0.1.0"
