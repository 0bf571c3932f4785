"""Small helpers with no ML in them: atomic writes, device choice, directory locks."""
