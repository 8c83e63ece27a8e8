"""What the kubelet derives from a pod spec before it starts a container, for the node agent.

Environment (envFrom, env with `$(VAR)` expansion, fieldRef, configMapKeyRef, secretKeyRef), volumes
as host folders (emptyDir, configMap, secret, downwardAPI, projected incl. serviceAccountToken,
hostPath, persistentVolumeClaim) and the container's mount list. Everything here reads the API and
writes files; nothing starts processes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import PurePosixPath

from kubernetes.client.exceptions import ApiException

from .kubejson import JSON, Kube

DEFAULT_MODE = 0o644  # the API default for configMap/secret/downwardAPI/projected files
TOKEN_EXPIRATION_S = 3607  # what the ServiceAccount admission plugin asks for; no refresh here
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class PodConfigError(Exception):
    """The pod cannot start yet (a missing ConfigMap, Secret, PVC...); the kubelet retries too."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, the rest stays as
    written
    (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _format_map(values: Mapping[str, str]) -> str:
    """How downward-API files and env render all labels/annotations: sorted `key="value"` lines."""
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))


def field_value(pod: JSON, path: str) -> str:
    """A downward-API fieldRef, read from the pod as the agent sees it (status IPs included)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    m = _FIELD_KEY.match(path)
    if m:
        return meta.get(m.group(1), {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs", [])),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs", [])),
    }
    if path in simple:
        return simple[path]
    if path in ("metadata.labels", "metadata.annotations"):
        return _format_map(meta.get(path.split(".")[1], {}))
    raise PodConfigError(f"fieldRef {path!r} is not supported by the node agent")


class Sources:
    """ConfigMaps and Secrets of one namespace, each read once per container start (as the kubelet
    reads them at start; later edits are not pushed into running pods here)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._ns = namespace
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def _read(self, kind: str, name: str) -> dict[str, bytes] | None:
        if (kind, name) not in self._cache:
            obj = self._kube.get_or_none(f"/api/v1/namespaces/{self._ns}/{kind}s/{name}")
            data: dict[str, bytes] | None = None
            if obj is not None and kind == "configmap":
                data = {k: v.encode() for k, v in obj.get("data", {}).items()}
                data |= {k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()}
            elif obj is not None:
                data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
            self._cache[(kind, name)] = data
        return self._cache[(kind, name)]

    def all(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """Every key of a ConfigMap ("configmap") or Secret ("secret"); None if optional, absent."""
        data = self._read(kind, name)
        if data is None and not optional:
            raise PodConfigError(f'{kind} "{name}" not found')
        return data

    def key(self, kind: str, ref: JSON) -> bytes | None:
        data = self.all(kind, ref["name"], ref.get("optional", False))
        if data is None:
            return None
        if ref["key"] not in data:
            if ref.get("optional", False):
                return None
            raise PodConfigError(
                f"couldn't find key {ref['key']} in {kind} {self._ns}/{ref['name']}"
            )
        return data[ref["key"]]


def container_env(
    pod: JSON, container: JSON, sources: Sources, base: Mapping[str, str]
) -> dict[str, str]:
    """The variables the pod spec defines for a container, in the kubelet's order: envFrom, then
    env; `value`s expand `$(VAR)` against what is defined before them plus `base` (the service
    variables)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        kind, ref = (
            ("configmap", src["configMapRef"])
            if "configMapRef" in src
            else ("secret", src["secretRef"])
        )
        data = sources.all(kind, ref["name"], ref.get("optional", False)) or {}
        for key, value in data.items():
            env[src.get("prefix", "") + key] = value.decode(errors="replace")
    for var in container.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), {**base, **env})
            continue
        value: bytes | str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            value = sources.key("configmap", source["configMapKeyRef"])
        elif "secretKeyRef" in source:
            value = sources.key("secret", source["secretKeyRef"])
        else:
            raise PodConfigError(
                f"env {var['name']}: {sorted(source)} is not supported by the node agent"
            )
        if value is not None:
            env[var["name"]] = value.decode(errors="replace") if isinstance(value, bytes) else value
    return env


def _safe_join(root: str, rel: str) -> str:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or ".." in parts:
        raise PodConfigError(f"invalid volume file path {rel!r}")
    return os.path.join(root, *parts)


def _write_files(root: str, files: list[tuple[str, bytes, int]]) -> None:
    """Writes a projected volume's files once, before any container of the pod starts."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    for rel, data, mode in files:
        path = _safe_join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)


def _keyed_files(
    data: dict[str, bytes] | None, source: JSON, what: str
) -> list[tuple[str, bytes, int]]:
    """Files of a configMap/secret source: every key, or only `items` (key → path, mode)."""
    if data is None:
        return []
    mode = source.get("defaultMode", DEFAULT_MODE)
    if "items" not in source:
        return [(k, v, mode) for k, v in data.items()]
    files = []
    for item in source["items"]:
        if item["key"] not in data:
            if source.get("optional", False):
                continue
            raise PodConfigError(f"{what}: key {item['key']} not found")
        files.append((item["path"], data[item["key"]], item.get("mode", mode)))
    return files


def _downward_files(pod: JSON, source: JSON) -> list[tuple[str, bytes, int]]:
    mode = source.get("defaultMode", DEFAULT_MODE)
    files = []
    for item in source.get("items", []):
        if "fieldRef" not in item:
            raise PodConfigError(
                f"downwardAPI {item['path']}: only fieldRef is supported by the node agent"
            )
        files.append(
            (
                item["path"],
                field_value(pod, item["fieldRef"]["fieldPath"]).encode(),
                item.get("mode", mode),
            )
        )
    return files


def _token(kube: Kube, pod: JSON, source: JSON) -> bytes:
    """A bound ServiceAccount token from the TokenRequest API, as the kubelet asks for one."""
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    audience = source.get("audience")
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience] if audience else [],
            "expirationSeconds": source.get("expirationSeconds", TOKEN_EXPIRATION_S),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }
    try:
        resp = kube.create(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body
        )
    except ApiException as e:  # the ServiceAccount may not exist yet: retry like a failed mount
        raise PodConfigError(f"token for serviceaccount {sa}: {e}") from e
    return resp["status"]["token"].encode()


def _projected_files(
    kube: Kube, pod: JSON, volume: JSON, sources: Sources
) -> list[tuple[str, bytes, int]]:
    proj = volume["projected"]
    mode = proj.get("defaultMode", DEFAULT_MODE)
    files: list[tuple[str, bytes, int]] = []
    for src in proj.get("sources", []):
        if "configMap" in src or "secret" in src:
            kind, ref = (
                ("configmap", src["configMap"]) if "configMap" in src else ("secret", src["secret"])
            )
            data = sources.all(kind, ref["name"], ref.get("optional", False))
            files += _keyed_files(data, {"defaultMode": mode, **ref}, f"{kind} {ref['name']}")
        elif "downwardAPI" in src:
            files += _downward_files(pod, {"defaultMode": mode, **src["downwardAPI"]})
        elif "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            files.append((sat["path"], _token(kube, pod, sat), mode))
        else:
            raise PodConfigError(
                f"projected source {sorted(src)} is not supported by the node agent"
            )
    return files


def _claim_path(kube: Kube, namespace: str, claim: str, claims_dir: str) -> str:
    """A PVC's folder: the hostPath/local path of its bound PV, else a per-claim folder of the agent
    (a local-path provisioner in miniature, kept across pods so data outlives them)."""
    pvc = kube.get_or_none(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
    if pvc is None:
        raise PodConfigError(f'persistentvolumeclaim "{claim}" not found')
    pv_name = pvc["spec"].get("volumeName")
    if pv_name:
        pv = kube.get_or_none(f"/api/v1/persistentvolumes/{pv_name}")
        if pv is None:
            raise PodConfigError(f'persistentvolume "{pv_name}" of claim {claim} not found')
        for kind in ("hostPath", "local"):
            if kind in pv["spec"]:
                return pv["spec"][kind]["path"]
    path = os.path.join(claims_dir, namespace, claim)
    os.makedirs(path, exist_ok=True)
    return path


def _host_path(volume: JSON) -> str:
    hp = volume["hostPath"]
    path, kind = hp["path"], hp.get("type", "")
    if kind == "DirectoryOrCreate":
        os.makedirs(path, exist_ok=True)
    elif kind == "FileOrCreate" and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()
    elif kind == "Directory" and not os.path.isdir(path):
        raise PodConfigError(f"hostPath {path} is not a directory")
    elif kind == "File" and not os.path.isfile(path):
        raise PodConfigError(f"hostPath {path} is not a file")
    return path


def prepare_volumes(
    kube: Kube, pod: JSON, volumes_dir: str, claims_dir: str, sources: Sources
) -> dict[str, str]:
    """Materialises every pod volume as a host path; returns volume name → path."""
    namespace = pod["metadata"]["namespace"]
    paths: dict[str, str] = {}
    for volume in pod["spec"].get("volumes", []):
        name = volume["name"]
        own = os.path.join(volumes_dir, name)
        if "emptyDir" in volume:
            os.makedirs(own, exist_ok=True)
        elif "configMap" in volume:
            ref = volume["configMap"]
            data = sources.all("configmap", ref["name"], ref.get("optional", False))
            _write_files(own, _keyed_files(data, ref, f"configmap {ref['name']}"))
        elif "secret" in volume:
            ref = volume["secret"]
            data = sources.all("secret", ref["secretName"], ref.get("optional", False))
            _write_files(own, _keyed_files(data, ref, f"secret {ref['secretName']}"))
        elif "downwardAPI" in volume:
            _write_files(own, _downward_files(pod, volume["downwardAPI"]))
        elif "projected" in volume:
            _write_files(own, _projected_files(kube, pod, volume, sources))
        elif "hostPath" in volume:
            own = _host_path(volume)
        elif "persistentVolumeClaim" in volume:
            own = _claim_path(
                kube, namespace, volume["persistentVolumeClaim"]["claimName"], claims_dir
            )
        else:
            kinds = sorted(set(volume) - {"name"})
            raise PodConfigError(f"volume {name}: {kinds} is not supported by the node agent")
        paths[name] = own
    return paths


def container_mounts(
    pod: JSON, container: JSON, volume_paths: Mapping[str, str], env: Mapping[str, str]
) -> list[JSON]:
    """The container's volumeMounts as bind mounts, parents before children (containerd's order)."""
    read_only_claims = {
        v["name"]
        for v in pod["spec"].get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("readOnly")
    }
    mounts = []
    for vm in container.get("volumeMounts", []):
        source = volume_paths[vm["name"]]
        sub = vm.get("subPath") or expand(vm.get("subPathExpr", ""), env)
        if sub:
            source = _safe_join(source, sub)
            if not os.path.exists(source):
                os.makedirs(source)  # the kubelet creates a missing subPath as a folder
        mounts.append(
            {
                "source": source,
                "target": vm["mountPath"],
                "readOnly": vm.get("readOnly", False) or vm["name"] in read_only_claims,
            }
        )
    return sorted(mounts, key=lambda m: len(PurePosixPath(m["target"]).parts))
