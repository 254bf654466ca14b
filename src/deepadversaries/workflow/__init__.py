"""The stage graph: folder layout, stages, the experiment grid, and its two executors (reproduce, study)."""
