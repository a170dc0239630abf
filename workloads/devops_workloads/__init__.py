"""Workloads of the DevOps-Model platform: training, evaluation, quantization, serving, the tiny model."""

from .quiet import install as _quiet_third_party_start_up

# Third-party start-up banners and warnings (DeepSpeed, torchao through torch) are dropped before
# anything imports those libraries; errors stay visible (quiet.py says what and how).
_quiet_third_party_start_up()
