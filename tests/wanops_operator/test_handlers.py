"""The pure parts of the handlers: which replica of a kopf peering works (the resync loop follows
kopf's rule), and which Job changes are worth a pass."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from wanops_operator.handlers import job_mark, leads

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def _peer(priority: int, seen_ago: float = 1, lifetime: int = 60) -> dict:
    seen = (NOW - timedelta(seconds=seen_ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


def test_the_highest_live_priority_leads() -> None:
    peering = {"status": {"a": _peer(10), "b": _peer(5)}}
    assert leads(peering, "a", 10, NOW)
    assert not leads(peering, "b", 5, NOW)


def test_equal_highest_priorities_pause_everyone_as_kopf_does() -> None:
    peering = {"status": {"a": _peer(7), "b": _peer(7)}}
    assert not leads(peering, "a", 7, NOW) and not leads(peering, "b", 7, NOW)


def test_a_dead_peer_no_longer_counts() -> None:
    """Its keep-alive is older than its lifetime (SIGKILLed): the waiting replica takes over."""
    peering = {"status": {"dead": _peer(99, seen_ago=61), "me": _peer(1)}}
    assert leads(peering, "me", 1, NOW)
    assert not leads({"status": {"dead": _peer(99, seen_ago=59), "me": _peer(1)}}, "me", 1, NOW)


def test_not_yet_announced_or_no_peering_object_means_paused() -> None:
    """kopf starts paused until its own keep-alive is in; the loop must not run ahead of it."""
    assert not leads({"status": {"other": _peer(1)}}, "me", 5, NOW)
    assert not leads({}, "me", 5, NOW)


def _job(**status: object) -> dict:
    return {"spec": {"suspend": False}, "status": status}


def test_job_marks_ignore_what_cannot_move_the_phase() -> None:
    created = _job()
    started = _job(startTime="2026-11-25T12:00:00Z", active=1, uncountedTerminatedPods={})
    assert job_mark(created) == job_mark(started)


def test_job_marks_see_what_can() -> None:
    base = job_mark(_job(active=1))
    assert job_mark(_job(active=1, ready=1)) != base  # a pod runs
    assert job_mark(_job(succeeded=1)) != base
    assert job_mark(_job(failed=1)) != base
    assert job_mark(_job(active=1, terminating=1)) != base  # a pod goes (evicted?)
    complete = _job(conditions=[{"type": "Complete", "status": "True"}])
    assert job_mark(complete) != job_mark(_job())
    assert job_mark({"spec": {"suspend": True}, "status": {}}) != job_mark(_job())
