"""Domain adaptation: the alignment losses (MMD, CORAL, DANN) and AdaBN, without file I/O."""
