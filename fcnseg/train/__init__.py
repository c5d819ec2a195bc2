"""Training: ``config`` (TrainConfig, resolution and validation) and ``recipes``; ``setup`` (config → run),
``loop`` (train / train_stage / train_step), ``schedule``, ``optim``; ``checkpoint`` (save, load, resume).

This package imports nothing itself, so that reading a checkpoint (``fcnseg.train.checkpoint``) does not pull in
the training loop."""
