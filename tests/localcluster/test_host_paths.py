"""The local cluster refuses, up front, a layout in which the pods could not see their own code."""

import sys

import pytest

from localcluster.cluster import ClusterError, check_pod_visible_host_paths


def test_an_interpreter_under_tmp_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", "/tmp/venv")
    with pytest.raises(ClusterError, match=r"Python environment is at /tmp/venv, under /tmp.*outside /tmp"):
        check_pod_visible_host_paths()


def test_this_checkout_and_interpreter_pass() -> None:
    check_pod_visible_host_paths()  # the suite itself runs from a layout the pods can see
