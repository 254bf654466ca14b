"""Inference, calibration and the evaluate stage (the paper's Tables 2/4)."""
