"""One-pixel attacks: the base class, the searches (DE, corner search, Sparse-RS) and the campaign stage."""
