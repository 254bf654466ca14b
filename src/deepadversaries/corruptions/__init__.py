"""Survey corruptions: the suite with its Rubin-grounded tables, ΔE/CE/mCE, and the benchmark stage."""
