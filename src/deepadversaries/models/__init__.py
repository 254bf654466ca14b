"""The architectures, TorchScript models trained elsewhere, and the run folder a trained model lives in."""
