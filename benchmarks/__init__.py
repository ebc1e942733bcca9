"""The fan-out benchmark suite (issue 7): load client, /proc accounting, scenarios, baselines, report."""
