"""The T3 engine's start-up timeline: how the points measured in the caller's process and in the
engine's become named stages, and the one point read from the operating system (a process's
start)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from chatterbox_t3.startup import (
    ENGINE_START_STAGES,
    STARTUP_STAGES,
    engine_start_timeline,
    process_started_at,
)

CALLER_PID = 1000
WORKER_STAGES = {
    "device": 0.5,
    "weights": 2.0,
    "compile": 1.0,
    "kv_profile": 0.5,
    "kv_cache": 0.25,
    "graph_capture": 3.0,
}
"""7.25 s of worker stages, run between its first stage's start (t = 131) and its last's end."""


def test_a_spawned_engine_process_splits_into_caller_and_process_stages() -> None:
    caller = {"begin": 100.0, "frontend": 101.0, "vllm_config": 101.5, "ready": 140.0}
    worker = {
        "pid": 2000.0,
        "process_started": 102.0,
        "plugins_loaded": 118.0,
        "first_stage": 131.0,
        "last_stage_done": 139.0,
    }
    timeline = engine_start_timeline(caller, WORKER_STAGES, worker, CALLER_PID)
    assert list(timeline) == list(ENGINE_START_STAGES)
    assert timeline == pytest.approx(
        {
            "frontend": 1.0,
            "vllm_config": 0.5,
            "vllm_client": 0.5,
            "process_imports": 16.0,
            "executor": 13.0,
            **WORKER_STAGES,
            "ready": 1.0,
        }
    )
    # Everything but the gaps between the worker's stages (8 s - 7.25 s) is in a stage.
    assert sum(timeline.values()) == pytest.approx(40.0 - 0.75)


def test_the_engine_core_in_the_callers_process_has_no_process_stages() -> None:
    caller = {"begin": 100.0, "frontend": 101.0, "ready": 140.0}
    worker = {
        "pid": float(CALLER_PID),
        "process_started": 5.0,  # the caller's own start: long before this engine
        "plugins_loaded": 101.2,
        "first_stage": 131.0,
        "last_stage_done": 139.0,
    }
    timeline = engine_start_timeline(caller, WORKER_STAGES, worker, CALLER_PID)
    assert list(timeline) == ["frontend", "executor", *STARTUP_STAGES, "ready"]
    assert timeline["executor"] == pytest.approx(30.0)
    assert timeline["ready"] == pytest.approx(1.0)


def test_a_forked_engine_process_has_no_imports_and_a_coarse_start_clamps_at_zero() -> None:
    # Forked: vLLM loaded its plugins before the fork, in the caller (no plugins_loaded). Its
    # start, known to a clock tick, reads a little before the caller's last mark.
    caller = {"begin": 100.0, "frontend": 101.0, "vllm_config": 101.5, "ready": 140.0}
    worker = {"pid": 2000.0, "process_started": 101.495, "first_stage": 103.0}
    timeline = engine_start_timeline(caller, WORKER_STAGES, worker, CALLER_PID)
    assert "process_imports" not in timeline
    assert timeline["vllm_client"] == 0.0
    assert timeline["executor"] == pytest.approx(1.5)
    # Without the worker's last point, ready runs from its first stage's start.
    assert timeline["ready"] == pytest.approx(37.0)


def test_without_the_callers_marks_only_the_workers_stages_are_known() -> None:
    worker = {"pid": 2000.0, "process_started": 102.0, "first_stage": 131.0}
    assert engine_start_timeline({}, WORKER_STAGES, worker, CALLER_PID) == WORKER_STAGES


def test_a_process_start_is_read_to_within_a_clock_tick() -> None:
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    after = time.time()
    try:
        started = process_started_at(child.pid)
    finally:
        child.kill()
        child.wait()
    assert started is not None
    assert before - 0.02 <= started <= after + 0.02
    assert process_started_at(2**22 + 12345) is None  # no such process
