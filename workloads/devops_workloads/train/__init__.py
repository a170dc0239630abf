"""Continued pretraining (PretrainRun) and instruction tuning (SFTRun); ``entry.run`` is the workload.

Modules: ``data`` (registry, sha1, rows), ``preprocess`` (blocks, SFT label masks, packing, collators),
``callbacks`` (progress, checkpoint config, SIGTERM), ``deepspeed_config``, ``plot`` (loss curve),
``entry`` (the Trainer set-up, resume, outputs). See docs/training.md.
"""
