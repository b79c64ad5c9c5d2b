"""Training: loss, metrics, EMA, the LightningModule and checkpoint I/O."""
