"""The one module that talks to the Kubernetes API (everything else is pure or goes through here).

Generic operations by apiVersion/kind through the kubernetes dynamic client: get, list by label,
create-if-absent (a 409 means another pass or replica created it first: the existing object is
returned, never a duplicate), server-side apply (ChatDeployment rollouts), delete, and
merge-patches of a resource's status subresource.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ResourceNotFoundError,
    UnprocessibleEntityError,
)

from devops_model.contract import CONTROLLER

from .kubeapi import ChildRejected

FIELD_MANAGER = CONTROLLER
log = logging.getLogger(__name__)


def load_api_client(kubeconfig: Optional[str] = None) -> client.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig (``--kubeconfig`` / $KUBECONFIG)."""
    try:
        if kubeconfig:
            raise kube_config.ConfigException("explicit kubeconfig")
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config(config_file=kubeconfig)
    cfg = client.Configuration.get_default_copy()
    # Many resources reconcile in parallel threads; the default pool of 4 would queue them.
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def _server_message(exc: Exception) -> str:
    """The API server's own sentence from a refused request (its Status object's message)."""
    import json

    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body)["message"]) if body else str(exc)
    except (ValueError, KeyError, TypeError):
        return str(body or exc)


class Kube:
    """Thread-safe wrapper used by the reconcilers (sync; kopf runs sync handlers in threads);
    implements :class:`devops_operator.kubeapi.KubeApi`."""

    def __init__(self, api_client: Optional[client.ApiClient] = None):
        self.api_client = api_client or load_api_client()
        self._dyn: Optional[DynamicClient] = None
        self._lock = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}

    @property
    def dyn(self) -> DynamicClient:
        with self._lock:
            if self._dyn is None:
                self._dyn = DynamicClient(self.api_client)
            return self._dyn

    def resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._resources:
            try:
                self._resources[key] = self.dyn.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                # A CRD installed after start (e.g. Kubeflow): refresh discovery once.
                self.dyn.resources.invalidate_cache()
                self._resources[key] = self.dyn.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def get(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict[str, Any]]:
        try:
            return self.resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        out = self.resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
        return [item.to_dict() for item in out.items]

    def create_if_absent(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created). Deterministic names make this idempotent across passes and restarts."""
        meta = manifest["metadata"]
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        existing = self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        if existing is not None:
            return existing, False
        try:
            return res.create(body=manifest, namespace=meta["namespace"]).to_dict(), True
        except ConflictError:
            found = self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
            return found or manifest, False
        except (BadRequestError, UnprocessibleEntityError) as exc:
            raise ChildRejected(manifest["kind"], meta["name"], _server_message(exc)) from exc

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: creates, or updates what this operator owns (rolls a Deployment)."""
        meta = manifest["metadata"]
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        try:
            return res.server_side_apply(body=manifest, name=meta["name"], namespace=meta["namespace"],
                                         field_manager=FIELD_MANAGER, force_conflicts=True).to_dict()
        except (BadRequestError, UnprocessibleEntityError) as exc:
            raise ChildRejected(manifest["kind"], meta["name"], _server_message(exc)) from exc

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            self.resource(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"})
            return True
        except NotFoundError:
            return False

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        res = self.resource(api_version, kind)
        res.status.patch(body={"status": status}, name=name, namespace=namespace,
                         content_type="application/merge-patch+json")
