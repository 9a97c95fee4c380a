"""Helpers of the experiment runner (``main.py``, ``trainer.py``, ``tester.py``).

Checkpoints (format, checksum, reading, loading) are :mod:`g_selfatt_models.checkpoints`.

* :mod:`runner.defaults`: filling unset configuration fields and checking values.
* :mod:`runner.data`: data loaders and the resumable, sharded training sampler.
* :mod:`runner.distributed`: device choice and DistributedDataParallel setup.
* :mod:`runner.schedulers`: learning-rate schedules behind one interface.
* :mod:`runner.paths`: run identity, checkpoint and report file names, which files a run may write.
* :mod:`runner.lock`: the lock that keeps two runs of one configuration apart.
* :mod:`runner.files`: atomic file writes (checkpoints among them) with the user's umask.
* :mod:`runner.random_state`: every random state, for exact resumption.
* :mod:`runner.signals`: stopping cleanly on SIGTERM and SIGINT.
* :mod:`runner.reporting`: metric logging (absl, optional wandb) and CSV reports.
* :mod:`runner.errors`: the user-facing errors ``main.py`` reports without a traceback.
"""
