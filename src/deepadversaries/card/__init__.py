"""The robustness card of one run, its renderings, and the leaderboard of many."""
