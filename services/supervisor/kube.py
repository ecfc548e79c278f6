"""Kubernetes mode: the supervisor writes the router's routing ConfigMap through the API server.

    GET   /api/v1/namespaces/<ns>/configmaps/<name>          -> data["routing.yaml"], resourceVersion
    PATCH /api/v1/namespaces/<ns>/configmaps/<name>          {"metadata": {"resourceVersion": rv},
                                                              "data": {"routing.yaml": ...}}
                                                             -> 200 | 409 Conflict (changed since rv)

The resourceVersion plays If-Match: a patch that carries it is refused with 409 when anyone
(a `helm upgrade`, a `kubectl edit`) changed the ConfigMap since the supervisor read it, and the
supervisor then re-reads, records the conflict and holds (``actions.apply_action``), exactly as
with the router's 412. The ConfigMap is what a restarted router (or a new replica) loads, so a
decision survives router restarts.

**How the router sees the change.** Every router pod mounts the ConfigMap as a volume and polls
its routing file's stat (``ROUTER_CONFIG_POLL_S``, 1 s); the kubelet rewrites a ConfigMap volume
in place (an atomic symlink swap) at its next sync of the pod: up to the kubelet's
``syncFrequency`` (default 1 min) plus its ConfigMap cache delay, so typically 30-90 s. To act
at once on the replica the router Service reaches, the supervisor also pushes the same config
through the router's admin API right after a successful ConfigMap write (``push_to_router``);
the file arriving later carries the same content, which the router treats as unchanged. Other
replicas follow at their kubelet sync.

Needs only ``get`` and ``patch`` on that one ConfigMap (the chart's Role, by ``resourceNames``).
The ``kubernetes`` client is synchronous; its calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from .actions import RouterAdmin, RouterUnavailable, Routing, WriteOutcome

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def in_cluster_namespace() -> str | None:
    """The pod's own namespace (mounted with its ServiceAccount token), or None outside a pod."""
    try:
        return NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


def api_client(kubeconfig: Path | None) -> Any:
    """An ApiClient from `kubeconfig`, or from the pod's ServiceAccount (in-cluster config)."""
    from kubernetes import client, config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    config.load_incluster_config()
    return client.ApiClient()


class ConfigMapRouting:
    """The routing config stored in a ConfigMap key; versions are resourceVersions."""

    def __init__(self, api: Any, namespace: str, name: str, key: str = "routing.yaml", timeout_s: float = 5.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self.namespace, self.name, self.key = namespace, name, key
        self.timeout_s = timeout_s
        self.where = f"ConfigMap {namespace}/{name}"

    def _describe(self, exc: Exception) -> str:
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException):
            return f"{exc.status} {exc.reason}: {(exc.body or '')[:300]}"
        return repr(exc)

    def _read(self) -> Routing:
        cm = self._core.read_namespaced_config_map(self.name, self.namespace, _request_timeout=self.timeout_s)
        text = (cm.data or {}).get(self.key)
        if text is None:
            raise RouterUnavailable(f"{self.where} has no key {self.key!r} (keys: {sorted(cm.data or {})})")
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RouterUnavailable(f"{self.where} key {self.key!r} is not YAML: {exc}") from exc
        if not isinstance(config, dict):
            raise RouterUnavailable(f"{self.where} key {self.key!r} is not a mapping")
        return Routing(str(cm.metadata.resource_version), config)

    async def read(self) -> Routing:
        try:
            return await asyncio.to_thread(self._read)
        except RouterUnavailable:
            raise
        except Exception as exc:  # API errors, timeouts, refused connections: all mean "cannot read"
            raise RouterUnavailable(f"GET {self.where} failed: {self._describe(exc)}") from exc

    def _patch(self, config: dict[str, Any], if_match: int | str) -> WriteOutcome:
        from kubernetes.client.exceptions import ApiException

        text = yaml.safe_dump(config, sort_keys=False)
        body = {"metadata": {"resourceVersion": str(if_match)}, "data": {self.key: text}}
        try:
            cm = self._core.patch_namespaced_config_map(self.name, self.namespace, body,
                                                        _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 409:
                return WriteOutcome("conflict", f"409: {self.where} changed since resourceVersion {if_match}")
            return WriteOutcome("error", f"PATCH {self.where} answered {self._describe(exc)}")
        return WriteOutcome("applied", f"{self.where} resourceVersion {if_match} -> {cm.metadata.resource_version}",
                            Routing(str(cm.metadata.resource_version), config))

    async def put(self, config: dict[str, Any], if_match: int | str) -> WriteOutcome:
        try:
            return await asyncio.to_thread(self._patch, config, if_match)
        except Exception as exc:
            raise RouterUnavailable(f"PATCH {self.where} failed: {self._describe(exc)}") from exc


async def push_to_router(router: RouterAdmin, config: dict[str, Any]) -> dict[str, Any]:
    """Best effort: the config just written to the ConfigMap, applied now by the router replica
    the Service reaches (over the version it reports, so a concurrent admin edit is a 412 and the
    ConfigMap arrives at the kubelet sync instead). Never raises; says what happened."""
    try:
        in_force = await router.read()
        if in_force.config == config:
            return {"status": "unchanged", "router_version": in_force.version}
        r = await router.write(config, in_force.version)
    except RouterUnavailable as exc:
        return {"status": "error", "detail": f"{exc}; the router picks the ConfigMap up at the kubelet's next sync"}
    if r.status_code == 200:
        return {"status": "applied", "router_version": r.json().get("version")}
    return {"status": "refused", "detail": f"PUT /admin/routing answered {r.status_code}; the router picks the "
                                           "ConfigMap up at the kubelet's next sync"}
