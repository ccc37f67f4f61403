"""Evaluation: ``metrics`` (the paper's measures and pysodmetrics'), ``layouts`` (the evaluation datasets'
folder layouts), ``evaluate`` (the authors' protocol, prediction folders), ``table`` (`trainers benchmark`:
ours beside the paper's published rows)."""
