"""Whole-scan prediction: a CT series in; nodules found, segmented, measured and exported."""
