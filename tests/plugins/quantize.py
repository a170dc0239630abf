"""Fixtures of the quantize area: DevOps chat calibration rows and ``tiny_gptq``, the tiny Qwen2
model quantized once per session with GPTQ int4 / group 128 (reused by the serving tests to check
that the built-in server serves GPTQ models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))

_TOPICS = [
    ("Deployment", "keeps the desired number of pod replicas running and rolls out new versions gradually"),
    ("StatefulSet", "gives each pod a stable name and its own persistent volume, for databases"),
    ("Service", "gives a set of pods one stable virtual IP and DNS name and balances traffic across them"),
    ("Ingress", "routes HTTP traffic from outside the cluster to services by host and path"),
    ("ConfigMap", "holds configuration as key-value pairs that pods read as files or environment variables"),
    ("Prometheus", "scrapes metrics over HTTP and evaluates alerting rules"),
    ("Helm", "packages Kubernetes manifests as charts with values that can be overridden"),
    ("CI/CD 流水线", "在每次提交时自动构建、测试并发布应用"),
    ("容器镜像", "应当以非 root 用户运行，并使用只读的根文件系统"),
    ("灰度发布", "先把新版本发给一小部分用户，观察指标正常后再逐步扩大范围"),
    ("日志采集", "通常由每个节点上的 DaemonSet 收集容器的标准输出并发送到集中存储"),
    ("Git 分支策略", "决定功能分支何时合并到主干，以及如何打标签发布"),
]


def devops_chat_rows(n: int = 60) -> list[dict[str, str]]:
    """Alpaca-format DevOps Q&A rows (Chinese and English), deterministic."""
    rows = []
    for i in range(n):
        name, what = _TOPICS[i % len(_TOPICS)]
        if any("\u4e00" <= ch <= "\u9fff" for ch in what):
            rows.append({"instruction": f"请解释{name}的作用（第{i}题）。", "input": "",
                         "output": f"{name}{what}。在生产环境中，还需要配合监控和告警，确保出现问题时能够快速回滚。"})
        else:
            rows.append({"instruction": f"What does a Kubernetes {name} do? (question {i})", "input": "",
                         "output": f"A {name} {what}. In production you also watch its metrics and events, "
                                   "and keep the manifests in Git so that every change is reviewed."})
    return rows


def write_calibration(path: Path, n: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in devops_chat_rows(n):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def devops_calibration(tmp_path_factory) -> Path:
    """A jsonl file of 60 alpaca-format DevOps Q&A rows."""
    return write_calibration(tmp_path_factory.mktemp("calibration") / "devops-chat.jsonl")


@pytest.fixture(scope="session")
def tiny_gptq(tiny_qwen, devops_calibration, tmp_path_factory) -> Path:
    """``tiny_qwen`` quantized with GPTQ int4, group size 128, symmetric, through the QuantizeRun
    workload; the folder holds the checkpoint plus ``artifact.json`` and ``quantize.json``."""
    from devops_model.api.resource import parse_resource
    from devops_workloads.quantize.entry import run
    from devops_workloads.runner import RunContext

    out = tmp_path_factory.mktemp("tiny-gptq") / "model"
    resource = parse_resource({
        "apiVersion": "devops-model.io/v1alpha1", "kind": "QuantizeRun", "metadata": {"name": "tiny-gptq"},
        "spec": {
            "model": {"uri": Path(tiny_qwen).resolve().as_uri()},
            "calibration": {"datasets": [{"uri": devops_calibration.resolve().as_uri()}], "samples": 32, "minLength": 16},
            "output": {"uri": out.resolve().as_uri()},
        },
    })
    status = run(RunContext(resource=resource, resolved_model=resource.spec.model.uri, workdir=out.parent)).to_dict()
    (out / "status.json").write_text(json.dumps(status, indent=2, ensure_ascii=False))
    return out
