"""``FEATURES_DIR/extract_report.json``: every video found with its status, counts and timings.

The report is rewritten atomically (temp file + rename) at the start, every ``SAVE_EVERY_S``
seconds while extracting, and at the end, so a killed run always leaves a parseable report. A
re-run carries over the entries of videos already in the store from the previous report.

Each entry: video_id, split, class, path (relative to VIDEO_ROOT), status (ok / skipped /
pending), reason (a key of ``vidcls.features.video.SKIP_REASONS``) and detail (message) when
skipped, and for extracted videos: duration_s, frames_sampled, frames_kept, frames_dropped_dark,
frames_dropped_blurry, quality_fallback, decoded_frames, seeks, decode_errors, decode_s, cnn_s.

Folder links the scan did not follow are listed apart, in ``skipped_links`` (path, target, reason:
a key of ``vidcls.features.folders.LINK_REASONS``, detail): they are folders, not videos, so they
are not in the video counts.

A sharded run (``extract --shard i/K``, or under torchrun) writes ``extract_report-0000i-of-0000K.json``
with its share's entries (shard 0 also lists the files rejected before decoding) and a ``shard``
record (index, count, and the number and fingerprint of all videos found, which must agree across
shards); ``merge_reports`` turns the K of them into the report one process would have written.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..store.reader import SPLITS
from ..store.shards import SHARD_KEY, shard_report_name
from ..utils.fs import atomic_write_json
from .folders import LINK_REASONS, VideoJob, VideoSet
from .video import SKIP_REASONS

REPORT_NAME = "extract_report.json"
SAVE_EVERY_S = 10.0
_COUNTS = ("frames_kept", "frames_dropped_dark", "frames_dropped_blurry")
SUMMARY_LINKS = 5  # folder links listed on the console (all of them are in the report)


def _key(split: str | None, video_id: str) -> tuple[str, str]:
    return (split or "", video_id)


class ExtractReport:
    """The report of one ``extract`` run (see the module docstring)."""

    def __init__(
        self,
        features_dir: str | os.PathLike,
        videos: VideoSet,
        extractor: dict,
        options: dict,
        stored_in: Callable[[VideoJob], str | None],
        *,
        shard: dict | None = None,
    ):
        """Start the report.

        Args:
            features_dir: where the report goes.
            videos: the VideoSet being extracted (a sharded run: this shard's share).
            extractor: the store's extractor description.
            options: the run's options, recorded as given.
            stored_in: function job -> split holding it already, or None.
            shard: a sharded run's {"index", "count", "videos", "scan"}; None: a whole run.
        """
        self.path = Path(features_dir) / report_name(shard)
        previous = _load_previous(self.path)
        self.entries: dict[tuple, dict] = {}
        for job in videos.jobs:
            where = stored_in(job)
            entry = _base(job, where or job.split)
            if where:
                old = previous.get(_key(where, job.video_id), {})
                entry.update(
                    old
                    if old.get("status") == "ok"
                    else {"status": "ok", "detail": "in the store from an earlier run"}
                )
            self.entries[_key(entry["split"], job.video_id)] = entry
        for job, code, message in videos.skipped:
            self.entries[_key(job.split, job.video_id)] = {
                **_base(job, job.split),
                "status": "skipped",
                "reason": code,
                "detail": message,
            }
        self.data = {
            "vidcls_version": __version__,
            "video_root": str(videos.root),
            "features_dir": str(Path(features_dir)),
            "layout": videos.layout,
            "class_names": videos.class_names,
            "options": options,
            "extractor": extractor,
            "status": "running",
            "started": _now(),
            "finished": None,
            "run": {},
            "duplicates": videos.duplicates,
            "ignored": videos.ignored,
            "skipped_links": videos.skipped_links,
        }
        if shard is not None:
            self.data[SHARD_KEY] = shard
        self._saved_at = 0.0

    def ok(self, job: VideoJob, info: dict) -> None:
        """Record an extracted video."""
        self.entries[_key(job.split, job.video_id)].update(status="ok", **info)

    def skip(self, job: VideoJob, code: str, message: str, info: dict | None = None) -> None:
        """Record a skipped video with its reason code and message."""
        self.entries[_key(job.split, job.video_id)].update(
            status="skipped", reason=code, detail=message, **(info or {})
        )

    def save(self, *, force: bool = False) -> None:
        """Write the report atomically (at most every SAVE_EVERY_S seconds unless forced)."""
        if not force and time.monotonic() - self._saved_at < SAVE_EVERY_S:
            return
        entries = sorted(self.entries.values(), key=_order)
        data = {**self.data, **totals(entries), "videos": entries}
        atomic_write_json(self.path, data)
        self._saved_at = time.monotonic()

    def finish(self, status: str, run: dict) -> dict:
        """Write the final report; returns it as a dict."""
        self.data.update(status=status, finished=_now(), run=run)
        self.save(force=True)
        return json.loads(self.path.read_text())


def report_name(shard: dict | None) -> str:
    """``extract_report.json``, or a shard's ``extract_report-0000i-of-0000K.json``."""
    return REPORT_NAME if shard is None else shard_report_name(shard["index"], shard["count"])


def merge_reports(reports: list[dict], features_dir: str | os.PathLike) -> dict:
    """The report a single-process run would have written, from K complete shard reports.

    Entries, totals and status equal the single run's (entries in its order); the timings differ:
    ``started``/``finished`` span the shards, ``run`` sums them (wall time: the slowest shard) and
    keeps each shard's own figures under ``shards``.

    Args:
        reports: the shard reports, in shard order. features_dir: where the merged report goes.
    """
    entries = sorted((e for r in reports for e in r["videos"]), key=_order)
    data = {k: v for k, v in reports[0].items() if k not in (SHARD_KEY, "totals", "skip_reasons", "videos")}
    data.update(
        features_dir=str(Path(features_dir)),
        status="complete",
        started=min(r["started"] for r in reports),
        finished=max(r.get("finished") or r["started"] for r in reports),
        run=_merged_run([r.get("run") or {} for r in reports]),
    )
    return {**data, **totals(entries), "videos": entries}


def _merged_run(runs: list[dict]) -> dict:
    new_videos, new_frames = (sum(int(r.get(k, 0)) for r in runs) for k in ("new_videos", "new_frames"))
    wall = max(float(r.get("wall_s", 0.0)) for r in runs)
    busy = [float(r.get("cnn_busy_share", 0.0)) for r in runs]
    return {
        "new_videos": new_videos,
        "new_frames": new_frames,
        "wall_s": wall,
        "frames_per_s": round(new_frames / wall, 3) if wall > 0 else 0.0,
        "cnn_s": round(sum(float(r.get("cnn_s", 0.0)) for r in runs), 3),
        "cnn_busy_share": round(sum(busy) / len(busy), 4),
        "decode_workers": runs[0].get("decode_workers"),
        "shards": runs,
    }


def _base(job: VideoJob, split: str | None) -> dict:
    return {
        "video_id": job.video_id,
        "split": split,
        "class": job.class_name,
        "path": job.rel,
        "status": "pending",
        "reason": None,
        "detail": None,
    }


def _order(entry: dict) -> tuple:
    rank = {s: i for i, s in enumerate(SPLITS)}
    return (rank.get(entry["split"], len(SPLITS)), entry["path"])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _load_previous(path: Path) -> dict:
    """Entries of an earlier report, by (split, video_id); {} if there is none or it is broken."""
    try:
        videos = json.loads(path.read_text()).get("videos", [])
        return {_key(v.get("split"), v["video_id"]): v for v in videos if "video_id" in v}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return {}


def totals(entries: list[dict]) -> dict:
    """Per-split and overall counts, and skip reasons, of a list of report entries."""
    rows: dict[str, Counter] = {}
    for e in entries:
        for name in (e["split"] or "unassigned", "all"):
            row = rows.setdefault(name, Counter())
            row["videos"] += 1
            row[e["status"]] += 1
            row["quality_fallback"] += bool(e.get("quality_fallback"))
            for c in _COUNTS:
                row[c] += int(e.get(c) or 0)
    reasons = Counter(e["reason"] for e in entries if e["status"] == "skipped")
    keys = ("videos", "ok", "skipped", "pending", *_COUNTS, "quality_fallback")
    return {
        "totals": {name: {k: int(row[k]) for k in keys} for name, row in rows.items()},
        "skip_reasons": dict(sorted(reasons.items())),
    }


def format_summary(report: dict) -> str:
    """The console table: per split videos / ok / skipped / frames, skip reasons, throughput."""
    head = f"{'split':<12}{'videos':>8}{'ok':>7}{'skipped':>9}{'frames':>9}{'dark':>7}{'blurry':>8}"
    lines = [head, "-" * len(head)]
    tot = report.get("totals", {})
    for name in [s for s in (*SPLITS, "unassigned") if s in tot] + ["all"]:
        r = tot.get(name)
        if r is None:
            continue
        if name == "all":
            lines.append("-" * len(head))
        lines.append(
            f"{name:<12}{r['videos']:>8}{r['ok']:>7}{r['skipped']:>9}{r['frames_kept']:>9}"
            f"{r['frames_dropped_dark']:>7}{r['frames_dropped_blurry']:>8}"
        )
    reasons = report.get("skip_reasons") or {}
    if reasons:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
        lines += [f"  {k}: {SKIP_REASONS.get(k, '')}" for k in reasons]
    lines += _link_lines(report.get("skipped_links") or [])
    fallback = tot.get("all", {}).get("quality_fallback", 0)
    if fallback:
        lines.append(
            f"{fallback} video(s) had no frame passing the quality thresholds; their best "
            f"frames were kept (quality_fallback in the report)"
        )
    run = report.get("run") or {}
    if run.get("new_videos"):
        lines.append(
            f"this run: {run['new_videos']} videos, {run['new_frames']} frames in "
            f"{run['wall_s']:.1f} s = {run['frames_per_s']:.2f} frames/s "
            f"(CNN busy {100 * run['cnn_busy_share']:.0f} % of the time)"
        )
    lines.append(f"report: {Path(report['features_dir']) / report_name(report.get(SHARD_KEY))}")
    if report.get(SHARD_KEY) and report.get("status") == "complete":
        shard = report[SHARD_KEY]
        lines.append(
            f"shard {shard['index']} of {shard['count']} complete; training reads the shards "
            f"once all {shard['count']} are, or merge them: vidcls merge {report['features_dir']}"
        )
    return "\n".join(lines)


def _link_lines(links: list[dict]) -> list[str]:
    """Summary lines for the folder links the scan did not follow."""
    if not links:
        return []
    reasons = Counter(link["reason"] for link in links)
    lines = ["folder links not followed: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))]
    lines += [f"  {k}: {LINK_REASONS.get(k, '')}" for k in sorted(reasons)]
    lines += [f"  {link['detail']}" for link in links[:SUMMARY_LINKS]]
    if len(links) > SUMMARY_LINKS:
        lines.append(f"  ... {len(links) - SUMMARY_LINKS} more under skipped_links in the report")
    return lines
