"""A worker's status patch carries status.progress only (defence in depth: the outcome is the
operator's, from the pod's termination message). On a real API server: tests/cluster/test_identity.py.

    .venv/bin/python -m pytest tests/workloads/test_status_patcher.py -q
"""

from __future__ import annotations

from devops_workloads.progress import StatusPatcher


def test_only_progress_is_sent():
    forged = {"progress": {"step": 3}, "state": "Succeeded", "artifact": {"uri": "pvc://attacker/backdoored"},
              "scores": {"overall": []}}
    assert StatusPatcher.payload(forged) == {"status": {"progress": {"step": 3}}}


def test_a_patch_without_progress_sends_nothing(tmp_path, capsys):
    patcher = StatusPatcher("sftruns/ns/run", "127.0.0.1", "1", sa_dir=tmp_path / "no-token")
    assert StatusPatcher.payload({"state": "Succeeded"}) is None
    # No request is made (there is no token to read, and no server on port 1): refused before any I/O.
    assert patcher.patch({"state": "Succeeded"}) is False
    assert "status.progress only" in capsys.readouterr().err
