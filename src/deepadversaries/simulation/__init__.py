"""The simulated survey: the LSST model, the galaxy families, Gini–M20 labels and the simulate stage."""
