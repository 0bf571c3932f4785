"""What a run leaves for people to read: the resource log, per-epoch dashboards, report.html."""
