"""Training: ``datamodule`` (images in memory, batches by index), ``module`` (the LightningModule of every
method and the log columns), ``callbacks`` (log.csv, best.pt, progress), ``class_weights``, ``adversarial``
(one-pixel adversarial batches) and ``train`` (the trainer factory and the train stage)."""
