"""Tests for vidcls.reporting.monitor: record contents, periodic thread, resume, corruption, SIGKILL safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from vidcls.reporting import monitor
from vidcls.reporting.monitor import (
    FIELDS,
    ResourceMonitor,
    load_log,
    sample,
    summarize,
)

SRC = Path(monitor.__file__).resolve().parents[1]  # .../src, for the subprocess' sys.path


def _check_record(rec: dict) -> None:
    for field in FIELDS:
        assert field in rec, field
    ts = datetime.fromisoformat(rec["timestamp"])
    assert ts.utcoffset() == timedelta(0)  # UTC, with an explicit offset
    for field in FIELDS[1:]:
        assert type(rec[field]) is float, (field, rec[field])
        assert rec[field] >= 0.0
    assert rec["ram_total_gb"] > 0.0
    assert rec["ram_used_gb"] <= rec["ram_total_gb"]
    assert 0.0 <= rec["ram_percent"] <= 100.0
    assert 0.0 <= rec["cpu_percent"] <= 100.0 * os.cpu_count()


def test_sample_has_all_fields_with_right_types():
    rec = sample()
    _check_record(rec)
    assert "tag" not in rec
    assert sample("member 0 start")["tag"] == "member 0 start"


def test_sample_ram_matches_psutil():
    import psutil

    rec = sample()
    assert rec["ram_total_gb"] == pytest.approx(psutil.virtual_memory().total / 1024**3)


def test_gpu_fields_zero_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: GPU fields legitimately non-zero")
    rec = sample()
    assert rec["gpu_allocated_gb"] == rec["gpu_reserved_gb"] == rec["gpu_max_allocated_gb"] == 0.0


def test_sample_does_not_create_a_cuda_context():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if torch.cuda.is_initialized():
        pytest.skip("CUDA already initialised by an earlier test")
    sample()
    # a monitor thread must not grab GPU memory in a process that has not used the GPU yet
    assert not torch.cuda.is_initialized()


def test_periodic_records_and_file_is_full_json_array(tmp_path):
    path = tmp_path / "results" / "resource_utilization_log.json"
    mon = ResourceMonitor(path, interval_s=0.05).start()
    time.sleep(0.5)
    t0 = time.monotonic()
    mon.stop()
    assert time.monotonic() - t0 < 0.5  # stop() must not wait out an interval

    tags = [r.get("tag") for r in mon.records]
    assert tags[0] == "start" and tags[-1] == "end"
    assert tags.count("periodic") >= 3
    assert set(tags[1:-1]) == {"periodic"}
    on_disk = load_log(path)
    assert on_disk == mon.records
    for rec in on_disk:
        _check_record(rec)
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in on_disk]
    assert stamps == sorted(stamps)


def test_stop_is_idempotent_and_context_manager(tmp_path):
    path = tmp_path / "log.json"
    with ResourceMonitor(path, interval_s=3600) as mon:
        assert mon.records[0]["tag"] == "start"
    mon.stop()
    mon.stop()
    assert [r["tag"] for r in load_log(path)] == ["start", "end"]
    with pytest.raises(RuntimeError):
        mon.start()


def test_invalid_interval_rejected(tmp_path):
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ResourceMonitor(tmp_path / "log.json", interval_s=bad)


def test_resume_appends_to_existing_log(tmp_path):
    path = tmp_path / "log.json"
    with ResourceMonitor(path, interval_s=3600) as first:
        first.record("member 0 start")
    first_records = load_log(path)
    assert len(first_records) == 3

    with ResourceMonitor(path, interval_s=3600) as second:
        assert second.records[:3] == first_records
    tags = [r["tag"] for r in load_log(path)]
    assert tags == ["start", "member 0 start", "end", "start", "end"]


def test_concurrent_record_calls_all_land_in_file(tmp_path):
    path = tmp_path / "log.json"
    mon = ResourceMonitor(path)

    def worker(k: int) -> None:
        for i in range(10):
            mon.record(f"t{k}-{i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tags = sorted(r["tag"] for r in load_log(path))
    assert tags == sorted(f"t{k}-{i}" for k in range(4) for i in range(10))


def test_corrupt_log_is_moved_aside(tmp_path):
    path = tmp_path / "log.json"
    garbage = b'[{"timestamp": "2024-01-01T00:00:00+00:00", "cpu_perc'
    path.write_bytes(garbage)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        mon = ResourceMonitor(path, interval_s=3600)
    assert mon.records == []
    moved = list(tmp_path.glob("log.json.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes() == garbage  # kept intact for inspection
    assert not path.exists()
    mon.record("x")
    assert [r["tag"] for r in load_log(path)] == ["x"]


def test_valid_json_but_not_a_list_is_moved_aside(tmp_path):
    path = tmp_path / "log.json"
    path.write_text('{"not": "a list"}')
    with pytest.warns(RuntimeWarning):
        ResourceMonitor(path)
    path.write_text('{"again": 1}')  # second corrupt copy in the same second must not overwrite
    with pytest.warns(RuntimeWarning):
        ResourceMonitor(path)
    assert len(list(tmp_path.glob("log.json.corrupt-*"))) == 2


def test_load_log_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_log(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError):
        load_log(bad)


def test_summarize_against_hand_computed_values():
    records = [
        {"timestamp": "a", "tag": "start", "cpu_percent": 10.0, "ram_used_gb": 2.0},
        {"timestamp": "b", "cpu_percent": 30.0, "ram_used_gb": 4.0, "gpu_utilization_percent": 50.0},
        {"timestamp": "c", "tag": "end", "cpu_percent": 50.0, "ram_used_gb": 9.0, "flag": True},
    ]
    out = summarize(records)
    assert set(out) == {"cpu_percent", "ram_used_gb", "gpu_utilization_percent"}
    assert out["cpu_percent"] == {"mean": 30.0, "min": 10.0, "max": 50.0}
    assert out["ram_used_gb"] == {"mean": 5.0, "min": 2.0, "max": 9.0}
    # only one record has the NVML field: its stats come from that record alone
    assert out["gpu_utilization_percent"] == {"mean": 50.0, "min": 50.0, "max": 50.0}
    assert summarize([]) == {}


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    from vidcls.reporting.monitor import ResourceMonitor
    ResourceMonitor({path!r}, interval_s=0.01).start()
    time.sleep(120)
    """
)


def _count_if_present(path: Path) -> int:
    if not path.exists():
        return 0
    data = json.loads(path.read_bytes())  # must parse at every instant, not just after a kill
    assert isinstance(data, list)
    return len(data)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")
def test_sigkill_never_leaves_a_broken_log(tmp_path):
    path = tmp_path / "resource_utilization_log.json"
    code = _CHILD.format(src=str(SRC), path=str(path))
    seen = 0
    # Each round appends to the previous rounds' log (resume) and is killed after a different
    # number of records plus a different extra delay, so the kill lands at varying write phases.
    for extra_records, delay in [(3, 0.0), (5, 0.003), (8, 0.007), (4, 0.011), (12, 0.0)]:
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            target = seen + extra_records
            deadline = time.monotonic() + 20
            while (n := _count_if_present(path)) < target:
                assert proc.poll() is None, "monitor subprocess died on its own"
                assert time.monotonic() < deadline, f"only {n} records after 20 s"
                time.sleep(0.002)
            seen = n
            time.sleep(delay)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        records = load_log(path)
        assert len(records) >= seen
        assert all("timestamp" in r for r in records)
        seen = len(records)
