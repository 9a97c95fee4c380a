"""Helpers of the experiment runner (``main.py``, ``trainer.py``, ``tester.py``).

* :mod:`runner.defaults`: filling unset configuration fields and checking values.
* :mod:`runner.data`: data loaders and the resumable, sharded training sampler.
* :mod:`runner.distributed`: device choice and DistributedDataParallel setup.
* :mod:`runner.schedulers`: learning-rate schedules behind one interface.
* :mod:`runner.checkpoint`: atomic checkpoint writing and strict loading.
* :mod:`runner.paths`: checkpoint and report file names.
* :mod:`runner.reporting`: metric logging (absl, optional wandb).
* :mod:`runner.errors`: the user-facing errors ``main.py`` reports without a traceback.
"""
