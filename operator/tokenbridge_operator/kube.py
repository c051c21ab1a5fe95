"""The few Kubernetes API calls the reconcilers need, as plain functions over dicts.

kopf watches and patches the Tokenbridge resources itself; this client reads and writes Secrets and reads the
identity providers an application references. Objects are returned as JSON-shaped dicts (camelCase keys), so the
reconcilers stay independent of the client library's model classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes import client, config

from tokenbridge.api import GROUP, KIND_IDP, PLURAL_CLUSTER_IDP, PLURAL_IDP, VERSION


def load_configuration() -> client.Configuration:
    """In-cluster configuration when running in a pod, else the kubeconfig (``KUBECONFIG`` or ``~/.kube``)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # KUBECONFIG is read now: the library's default was fixed when it was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return configuration


def connection_info() -> kopf.ConnectionInfo:
    """kopf's credentials from the same configuration as our own client (fresh each call: tokens rotate)."""
    configuration = load_configuration()
    token = configuration.get_api_key_with_prefix("BearerToken") or ""
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme="Bearer" if token else None,
        token=token.split(" ", 1)[-1] if token else None,
    )


class Kube:
    def __init__(self, api_client: client.ApiClient, timeout: float):
        self._api = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.timeout = timeout

    @classmethod
    def load(cls, timeout: float) -> Kube:
        return cls(client.ApiClient(load_configuration()), timeout)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self._api.sanitize_for_serialization(obj)

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.core.read_namespaced_secret(name, namespace, _request_timeout=self.timeout))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def write_secret(self, body: Mapping[str, Any], create: bool) -> None:
        """Create, or replace at the resourceVersion that was read (409 Conflict if it changed meanwhile)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        # The client sends a plain dict body as it is; its type hints only name the model classes.
        if create:
            self.core.create_namespaced_secret(
                namespace,
                body,  # type: ignore[arg-type]
                _request_timeout=self.timeout,
            )
        else:
            self.core.replace_namespaced_secret(
                name,
                namespace,
                body,  # type: ignore[arg-type]
                _request_timeout=self.timeout,
            )

    def get_idp(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        kind, namespace, name = key
        try:
            if kind == KIND_IDP:
                found = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL_IDP, name, _request_timeout=self.timeout
                )
            else:
                found = self.custom.get_cluster_custom_object(
                    GROUP, VERSION, PLURAL_CLUSTER_IDP, name, _request_timeout=self.timeout
                )
            return cast(dict[str, Any], found)  # custom objects come back as the JSON they are
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
