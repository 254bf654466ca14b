"""Training: the LightningModule for every method, the trainer factory and the train stage."""
