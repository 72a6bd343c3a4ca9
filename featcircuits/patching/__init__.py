"""Sub-rank-one feature patching experiments, searches and basis comparisons."""
