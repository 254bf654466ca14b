"""The dataset folder: loading and normalising it, and importing a survey's own images into one."""
