"""A run directory: every path and file of a run (``RunDir``), the final-choice record and checkpoint I/O."""
