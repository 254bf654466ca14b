"""The paper's findings with intervals, and the reproduction and study reports."""
