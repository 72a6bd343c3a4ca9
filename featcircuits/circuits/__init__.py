"""Feature circuits: targets, discovery (ACDC, attribution, hybrid) and faithfulness."""
