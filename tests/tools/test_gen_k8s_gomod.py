"""tools/gen_k8s_gomod.py: the consumer go.mod that builds Kubernetes and helm in one module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "tools" / "gen_k8s_gomod.py"
spec = importlib.util.spec_from_file_location("gen_k8s_gomod", SCRIPT)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def _helm_gomod(client_go: str) -> str:
    return f"module helm.sh/helm/v3\n\ngo 1.26.0\n\nrequire (\n\tk8s.io/client-go {client_go}\n)\n"


def test_staging_modules_map_to_the_release_and_helm_joins_the_module() -> None:
    text = gen.render("v1.36.3", KUBERNETES_GOMOD, "v3.21.4", _helm_gomod("v0.36.2"))
    assert "\tk8s.io/api       => k8s.io/api v0.36.3\n" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3\n" in text
    assert "\thelm.sh/helm/v3 v3.21.4" in text and "\thelm.sh/helm/v3/cmd/helm" in text


def test_a_helm_made_for_a_newer_kubernetes_is_refused() -> None:
    """The staging replaces would build it against older client libraries than it declares."""
    with pytest.raises(SystemExit, match=r"k8s.io/client-go v0.37.0, newer than Kubernetes v1.36.3"):
        gen.render("v1.36.3", KUBERNETES_GOMOD, "v3.22.0", _helm_gomod("v0.37.0"))
