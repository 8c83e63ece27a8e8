"""wanops_operator: the kopf operator that turns a VideoGeneration into an Indexed Job.

Imports wanspec, kopf, kubernetes and prometheus-client only (never torch or wan_core).
Run with `python -m wanops_operator`; settings come from `WANOPS_*` variables (`config.py`).

What the chart must grant the operator's ServiceAccount:
- videogenerations: get, list, watch, patch (kopf's annotations); videogenerations/status: patch;
  videogenerations/finalizers: update (owner references with blockOwnerDeletion).
- jobs: get, list, watch, create, patch, delete; configmaps, services: get, create, patch;
  pods: list; persistentvolumeclaims, serviceaccounts, secrets: get (pre-flight); events: create.
- With peering: kopf's (cluster)kopfpeerings: get, list, watch, patch.
The runner's ServiceAccount (`WANOPS_RUNNER_SERVICE_ACCOUNT`, in every served namespace) needs
videogenerations/status: get, patch, and nothing else.
"""
