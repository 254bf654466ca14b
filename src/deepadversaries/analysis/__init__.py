"""Statistics and latent-space maths, and the analyze stage."""
