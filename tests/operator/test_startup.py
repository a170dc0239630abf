"""The operator's kopf settings: Events name this operator and its pod, not kopf's defaults."""

from __future__ import annotations

import socket

import kopf

from devops_model.contract import CONTROLLER
from devops_operator.config import OperatorConfig
from devops_operator.handlers.startup import _configure, reporting_instance


def configured(monkeypatch, **env: str) -> kopf.OperatorSettings:
    for name in ("POD_NAME", "HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    memo.kube = object()  # no API server: _configure only keeps it
    _configure(OperatorConfig(), settings, memo)
    return settings


def test_events_name_the_operator_and_its_pod(monkeypatch):
    settings = configured(monkeypatch, POD_NAME="devops-model-5d8f7-x2x9q", HOSTNAME="other")
    assert settings.posting.reporting_component == CONTROLLER == "devops-model-operator"
    assert settings.posting.reporting_instance == "devops-model-5d8f7-x2x9q"


def test_reporting_instance_falls_back_to_hostname_then_the_host():
    assert reporting_instance({"HOSTNAME": "pod-b"}) == "pod-b"
    assert reporting_instance({"POD_NAME": "", "HOSTNAME": ""}) == socket.gethostname()
