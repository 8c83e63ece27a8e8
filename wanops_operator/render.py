"""Pure rendering: one VideoGeneration attempt → ConfigMap, headless Service, Indexed Job.

No client, no clock, no randomness: the same resource, attempt and config always give the same
objects, so a repeated reconcile or a restarted operator applies exactly what exists already.
Owner references (controller, blockOwnerDeletion) are set here, so deleting the resource lets the
garbage collector remove everything, with or without the operator running; no finalizer is needed.

Shape of one attempt (k8s-notes §1.3):
- ConfigMap `<job>`: `config.json`, a `wanspec.contract.RunnerConfig`, mounted at /etc/wanops.
- Service `<name>`: headless, publishes not-ready addresses, so `<job>-0.<name>` (rank 0) resolves
  before any pod is Ready; shared by all attempts (their pod host names differ).
- Job `<name>-a<attempt>`: Indexed, one pod per `gpusPerPod` GPUs, `subdomain` the Service.
  `backoffLimit: 0`: ranks are coupled, so one failed pod fails the attempt and the operator
  starts the next attempt whole (up to spec.retryLimit) instead of the Job replacing one rank.
  The pod failure policy fails at once on the runner's invalid-input exit code and ignores
  disruptions (preemption, drain), which then do not count as a failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from wanops_operator.config import OperatorConfig
from wanspec import contract
from wanspec.spec import API_VERSION, GPU_RESOURCE, KIND, VideoGeneration, VideoGenerationSpec
from wanspec.validate import parse, resolve

FIELD_MANAGER = "wanops-operator"

# Labels on every child object and pod. Values are the shortened names (label values ≤ 63).
LABEL_VIDEOGENERATION = "wanops.io/videogeneration"
LABEL_ATTEMPT = "wanops.io/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "wanops-operator"
# The owner's exact name (any length), to map Job and Pod events back to their resource.
ANNOTATION_OWNER = "wanops.io/videogeneration"
# Passed from the resource to the Job, so Kueue's batch/v1 Job integration admits it.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LIMIT = 59  # pod host name `<job>-<index>` must be a DNS label: 59 + "-79" ≤ 63
NAME_LIMIT = 63
CONFIG_VOLUME, CHECKPOINT_VOLUME, SHM_VOLUME, TMP_VOLUME = "config", "checkpoints", "dshm", "tmp"
COMPILE_CACHE_VOLUME = "compile-cache"
# The root filesystem is read-only: the runner's work dir, torchrun's and ffmpeg's files and any
# cache under $HOME go to an emptyDir at /tmp (the runner image's WORKDIR).
SCRATCH_DIR = "/tmp"
RENDEZVOUS_PORT_NAME = "rendezvous"
# The node-lifecycle controller's taints for a node that stopped reporting. Pods tolerate them for
# OperatorConfig.node_lost_seconds instead of Kubernetes' default 300 s: a lost rank stalls every
# other rank, so the attempt is evicted, and replaced by the operator, soon.
NODE_LOST_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def fit(base: str, suffix: str = "", limit: int = NAME_LIMIT) -> str:
    """`base + suffix` if it fits `limit`, else base cut and marked with a hash of the whole base,
    so long names stay distinct and the same input always gives the same name."""
    base = base.replace(".", "-")
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def service_name(name: str) -> str:
    return fit(name)


def job_name(name: str, attempt: int) -> str:
    return fit(name, f"-a{attempt}", JOB_NAME_LIMIT)


def seed_for(spec: VideoGenerationSpec, uid: str) -> int:
    """The seed actually used: spec.seed, or for -1 one derived from the uid (stable across
    attempts and operator restarts, different between resources)."""
    if spec.seed >= 0:
        return spec.seed
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big")


def as_dict(vg: Mapping[str, Any] | VideoGeneration) -> dict[str, Any]:
    """A resource as the API returns it (camelCase dict), from a dict or the parsed model."""
    if isinstance(vg, VideoGeneration):
        return vg.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dict(vg)


def labels(vg: Mapping[str, Any], attempt: int | None = None) -> dict[str, str]:
    """Selector labels of a resource's children; with `attempt`, those of one attempt's Job."""
    out = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_VIDEOGENERATION: fit(vg["metadata"]["name"])}
    if attempt is not None:
        out[LABEL_ATTEMPT] = str(attempt)
    return out


def owner_reference(vg: Mapping[str, Any]) -> dict[str, Any]:
    meta = vg["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(vg: Mapping[str, Any], name: str, attempt: int | None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": vg["metadata"]["namespace"],
        "labels": labels(vg, attempt),
        "annotations": {ANNOTATION_OWNER: vg["metadata"]["name"]},
        "ownerReferences": [owner_reference(vg)],
    }


def kueue_queue(vg: Mapping[str, Any]) -> str | None:
    return (vg["metadata"].get("labels") or {}).get(KUEUE_QUEUE_LABEL)


def runner_config(
    vg: Mapping[str, Any], spec: VideoGenerationSpec, *, attempt: int, config: OperatorConfig
) -> contract.RunnerConfig:
    """What the runner reads from /etc/wanops/config.json (see wanspec.contract)."""
    meta = vg["metadata"]
    out = spec.output
    key = f"{(out.prefix if out else config.store_prefix)}{meta['namespace']}/{meta['name']}"
    return contract.RunnerConfig(
        resource=contract.ResourceRef(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"]
        ),
        job_name=job_name(meta["name"], attempt),
        attempt=attempt,
        seed=seed_for(spec, meta["uid"]),
        checkpoint_dir=f"{contract.CHECKPOINT_DIR}/{spec.checkpoint.path}",
        output=contract.OutputObject(
            endpoint=(out.endpoint if out and out.endpoint else config.store_endpoint),
            region=config.store_region,
            bucket=out.bucket if out else config.store_bucket,
            key=f"{key}.mp4",
            log_key=f"{key}.log",
        ),
        resolved=resolve(spec),
    )


def store_secret(spec: VideoGenerationSpec, config: OperatorConfig) -> str:
    """The Secret holding the object-store keys: the spec's, else the installation's."""
    ref = spec.output.credentials_secret_ref if spec.output else None
    return ref.name if ref else config.store_secret


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _container(
    spec: VideoGenerationSpec,
    *,
    job: str,
    service: str,
    pods: int,
    per_pod: int,
    config: OperatorConfig,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(pods)},
        {"name": "PET_NPROC_PER_NODE", "value": str(per_pod)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {"name": "PET_MASTER_ADDR", "value": f"{job}-0.{service}"},
        {"name": "PET_MASTER_PORT", "value": str(contract.MASTER_PORT)},
        {"name": contract.CONFIG_ENV, "value": contract.CONFIG_PATH},
        {"name": "HOME", "value": SCRATCH_DIR},
    ]
    if config.compile_cache_claim:
        env.append({"name": contract.COMPILE_CACHE_ENV, "value": contract.COMPILE_CACHE_DIR})
    secret = store_secret(spec, config)
    env += [_secret_env(key, secret, key) for key in contract.STORE_SECRET_KEYS]
    ext = spec.prompt_extension
    if ext is not None and ext.method == "dashscope" and ext.api_key_secret_ref is not None:
        ref = ext.api_key_secret_ref
        env.append(_secret_env(contract.DASHSCOPE_KEY_ENV, ref.name, ref.key))

    override = spec.placement.resources
    requests = dict(override.requests or {}) if override else {}
    limits = dict(override.limits or {}) if override else {}
    limits[GPU_RESOURCE] = str(per_pod)  # extended resources: the request follows the limit
    resources: dict[str, Any] = {"limits": limits}
    if requests:
        resources["requests"] = requests

    mounts = [
        {"name": CONFIG_VOLUME, "mountPath": contract.CONFIG_DIR, "readOnly": True},
        {"name": CHECKPOINT_VOLUME, "mountPath": contract.CHECKPOINT_DIR, "readOnly": True},
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
        {"name": TMP_VOLUME, "mountPath": SCRATCH_DIR},
    ]
    if config.compile_cache_claim:
        mounts.append({"name": COMPILE_CACHE_VOLUME, "mountPath": contract.COMPILE_CACHE_DIR})

    return {
        "name": contract.RUNNER_CONTAINER,
        "image": spec.placement.runner_image or config.runner_image,
        "command": list(config.runner_command),
        "env": env,
        "ports": [{"name": RENDEZVOUS_PORT_NAME, "containerPort": contract.MASTER_PORT}],
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Pod Security "restricted": the runner image must run as a non-root numeric USER.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _pod_spec(
    spec: VideoGenerationSpec,
    *,
    job: str,
    service: str,
    pods: int,
    per_pod: int,
    config_map: str,
    config: OperatorConfig,
) -> dict[str, Any]:
    placement = spec.placement
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": service,
        "serviceAccountName": config.runner_service_account,
        "enableServiceLinks": False,
        "containers": [
            _container(spec, job=job, service=service, pods=pods, per_pod=per_pod, config=config)
        ],
        "volumes": [
            {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
            {
                "name": CHECKPOINT_VOLUME,
                "persistentVolumeClaim": {
                    "claimName": spec.checkpoint.claim_name,
                    "readOnly": True,
                },
            },
            # NCCL and torch multiprocessing need more than the runtime's 64 MiB /dev/shm.
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
            {"name": TMP_VOLUME, "emptyDir": {}},
        ],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if config.compile_cache_claim:
        claim = {"claimName": config.compile_cache_claim}
        pod["volumes"].append({"name": COMPILE_CACHE_VOLUME, "persistentVolumeClaim": claim})
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations or []
    ]
    own = {t.get("key") for t in tolerations}
    pod["tolerations"] = tolerations + [
        {
            "key": key,
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": config.node_lost_seconds,
        }
        for key in NODE_LOST_TAINTS
        if key not in own
    ]
    if placement.affinity:
        pod["affinity"] = placement.affinity
    if placement.priority_class_name:
        pod["priorityClassName"] = placement.priority_class_name
    return pod


def job_suspend(vg: Mapping[str, Any], spec: VideoGenerationSpec, existing: Mapping | None) -> bool:
    """The Job's `suspend`. Under Kueue the Job is created suspended and from then on Kueue owns
    the field, so the live value is kept; otherwise it mirrors spec.suspend."""
    if kueue_queue(vg) is None:
        return spec.suspend
    if existing is None:
        return True
    return bool(existing.get("spec", {}).get("suspend", False))


def render(
    vg: Mapping[str, Any] | VideoGeneration,
    *,
    config: OperatorConfig,
    attempt: int = 0,
    existing_job: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """[ConfigMap, Service, Job] of one attempt. `existing_job` is the live Job of this attempt,
    if any (only its `suspend` is read, for Kueue). Raises `InvalidSpec` for an invalid spec."""
    vg = as_dict(vg)
    spec = parse(vg["spec"])
    meta = vg["metadata"]
    resolved = resolve(spec)
    job, service = job_name(meta["name"], attempt), service_name(meta["name"])
    pods, per_pod = resolved.pods, resolved.gpus_per_pod
    run_config = runner_config(vg, spec, attempt=attempt, config=config)

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(vg, job, attempt),
        "data": {contract.CONFIG_FILE: run_config.model_dump_json(by_alias=True, indent=1)},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(vg, service, None),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(vg),
            "ports": [
                {
                    "name": RENDEZVOUS_PORT_NAME,
                    "port": contract.MASTER_PORT,
                    "targetPort": contract.MASTER_PORT,
                }
            ],
        },
    }
    job_meta = _meta(vg, job, attempt)
    pod_labels = labels(vg, attempt)
    if (queue := kueue_queue(vg)) is not None:
        job_meta["labels"][KUEUE_QUEUE_LABEL] = queue
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": pods,
        "parallelism": pods,
        "backoffLimit": 0,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": contract.RUNNER_CONTAINER,
                        "operator": "In",
                        "values": [contract.EXIT_INVALID_INPUT],
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "podReplacementPolicy": "Failed",
        "suspend": job_suspend(vg, spec, existing_job),
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {ANNOTATION_OWNER: meta["name"]},
            },
            "spec": _pod_spec(
                spec,
                job=job,
                service=service,
                pods=pods,
                per_pod=per_pod,
                config_map=job,
                config=config,
            ),
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return [
        config_map,
        headless,
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": job_spec},
    ]
