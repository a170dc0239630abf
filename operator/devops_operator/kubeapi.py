"""The Kubernetes access layer as the reconcilers see it: a :class:`KubeApi` protocol.

:class:`devops_operator.kube.Kube` implements it against the API server; tests may back it with
fakes, and the type checker keeps both to this one signature list. Nothing here imports the
kubernetes client: reconcilers and builders stay pure.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

#: A Kubernetes object as plain JSON-like data.
Obj = dict[str, Any]


class ChildRejected(Exception):
    """The API server refused to create or update a child (HTTP 400/422: invalid, or forbidden by an
    admission webhook). Retrying the same manifest cannot succeed: the run fails with InvalidSpec and
    the server's message."""

    def __init__(self, kind: str, name: str, message: str):
        super().__init__(f"the API server refused {kind} {name}: {message}")
        self.kind = kind
        self.name = name
        self.server_message = message


class KubeApi(Protocol):
    def get(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[Obj]: ...

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[Obj]: ...

    def create_if_absent(self, manifest: Obj) -> tuple[Obj, bool]: ...

    def apply(self, manifest: Obj) -> Obj: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> None: ...
