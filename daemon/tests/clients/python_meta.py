"""APIServices, kube-apiserver's field order and managedFields of status writes through the
official Python client (`kubernetes` from PyPI) against a shoal API server; prints one JSON
object of what it observed. Argument: the kubeconfig."""
import json
import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
reg = client.ApiregistrationV1Api()
seen = {}

services = reg.list_api_service()
seen["names"] = [s.metadata.name for s in services.items]
apps = reg.read_api_service("v1.apps")
seen["apps_service"] = apps.spec.service
seen["apps_priority"] = [apps.spec.group_priority_minimum, apps.spec.version_priority]
cond = apps.status.conditions[0]
seen["apps_condition"] = [cond.type, cond.status, cond.reason]
try:
    reg.create_api_service(client.V1APIService(
        metadata=client.V1ObjectMeta(name="v1beta1.metrics.example.com"),
        spec=client.V1APIServiceSpec(group="metrics.example.com", version="v1beta1",
                                     group_priority_minimum=100, version_priority=100,
                                     service=client.ApiregistrationV1ServiceReference(name="m", namespace="x"))))
    seen["create_code"] = 201
except ApiException as e:
    seen["create_code"] = e.status
    seen["create_reason"] = json.loads(e.body)["reason"]

# Raw bytes, as a client comparing bodies as text sees them.
raw = core.read_namespaced_config_map("order", "default", _preload_content=False)
seen["get_prefix"] = raw.data.decode()[:80]
try:
    core.read_namespaced_config_map("missing", "default")
except ApiException as e:
    seen["not_found_prefix"] = e.body[:80] if isinstance(e.body, str) else e.body.decode()[:80]

# A status write is recorded with subresource "status".
core.patch_namespaced_pod_status("web", "default", {"status": {"phase": "Running"}},
                                 field_manager="py-status")
pod = core.read_namespaced_pod("web", "default")
seen["status_entries"] = [[m.manager, m.operation, m.subresource] for m in pod.metadata.managed_fields
                          if m.subresource]
print(json.dumps(seen))
