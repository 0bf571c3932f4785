"""Using a trained run on new videos: ``vidcls.load(RUN_DIR)`` -> a scikit-learn style ``Predictor``.

The predictor serves exactly what the run chose on validation (``RUN_DIR/final.json``, see
:func:`vidcls.run.final.load_final_choice`): the mean softmax (a multi-label run: the mean sigmoid
per class) of the chosen members, each over the TTA views when the choice uses TTA, else over the
original sequence. The members are loaded once (``engine.members.load_members``, as ``vidcls
evaluate`` loads them). A feature sequence goes through what training and ``vidcls evaluate`` applied
to it:

1. rounded to the precision the features were stored in (float16 unless the store says otherwise),
   as the model only ever saw stored features;
2. thinned uniformly to the checkpoint's ``max_frames`` (:func:`vidcls.utils.sampling.uniform_indices`);
3. one :func:`vidcls.engine.forward.forward` over the served members and views: frame-budget batches
   (``batch_size`` videos, ``batch_frames`` padded frames, the run's own settings) in input order, each
   view built by :func:`vidcls.engine.views.tta_batch`;
4. softmax (sigmoid) per member and view, averaged (``engine.probs.served_probs``); with a calibration
   (``RUN_DIR/calibration.json``, :mod:`vidcls.evaluation.calibrate`) every logit is first divided by its
   temperature, and an out-of-distribution score below the validation threshold marks a prediction
   as not to be trusted;
5. a multi-label run (checkpoints' ``task`` "multilabel") also gives each video its label set: the
   classes whose probability reaches their validation threshold (:mod:`vidcls.predict.multilabel`).

A video is first turned into features by exactly the extractor recorded with the run's features
(:meth:`vidcls.features.backbone.FrameEncoder.from_record`: backbone, weights, image size and
normalisation, frame sampling, quality filter), built on the first video input. Weights that are not
on this machine, or other weights, or another feature dimension are errors naming what to provide
(``--weights PATH.pth``); nothing is ever patched over.

Inputs ``x`` everywhere: a video path (str / Path), a ``(T, D)`` float array, or a list of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import TTA_SETTINGS, TrainConfig
from ..engine.forward import Outputs, forward
from ..engine.members import load_members
from ..engine.probs import served_probs
from ..errors import ConfigError
from ..run.rundir import RunDir
from ..utils.device import resolve_device
from ..utils.sampling import uniform_indices
from . import multilabel, segments
from .decide import trust_of, usable_record
from .inputs import as_list, check_features, encode_videos, error_record, gather, stamps
from .loading import build_encoder, run_window, sampling_rate, stream_video, usable_calibration

if TYPE_CHECKING:  # built on first use only (torchvision)
    from ..features.backbone import FrameEncoder
    from ..features.quality import Quality
    from ..features.sampling import Sampling

__all__ = ["Predictor", "load", "served_probs"]

ORIGINAL = "original"
log = logging.getLogger(__name__)


def load(
    run_dir: str | os.PathLike,
    *,
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    tta: str = "auto",
    decode_workers: int = 0,
) -> Predictor:
    """Load a finished run for prediction (its recorded final choice, members loaded once).

    Args:
        run_dir: a run trained with ``vidcls train`` (``final.json`` and the checkpoints it names).
        device: auto | cpu | cuda | cuda:N.
        weights: a local .pth for the frame CNN the features were extracted with (only needed for
            video inputs, when those weights are not on this machine).
        tta: auto (what the run chose) | on | off (force TTA over the run's modes, or the original view).
        decode_workers: processes decoding videos beside the CNN when several videos are given at once.

    Raises:
        ConfigError: no run, no/damaged final.json, bad ``tta``.
        CheckpointError: a served member's checkpoint is missing, damaged or inconsistent.
    """
    return Predictor(run_dir, device=device, weights=weights, tta=tta, decode_workers=decode_workers)


class Predictor:
    """A loaded run. Build it with :func:`load`.

    Attributes:
        classes_: class names, in the order of the probability columns. feature_dim_: the trained D.
        extractor_: the extractor record of the run's features (what a video goes through).
        members_: the served members. source_: "ensemble" or "member <i>".
        tta_used_: whether the served choice averages TTA views. tta_modes_: the run's TTA modes.
        views_: the views averaged per member (``tta_modes_`` with TTA, else ``["original"]``).
        max_frames_: longer sequences are thinned uniformly to this many frames.
        fps_: the run's sampling rate (None: N frames per video, or imported features).
        window_: (length, "s" | "frames"), the run's typical training length: segments' default window.
        batch_size_, batch_frames_: the run's frame-budget batching. run_dir: the run. device: torch device.
        calibration_: ``RUN_DIR/calibration.json`` as a dict, or None: not calibrated, or calibrated for
            other members or views than served (``tta`` forced, final.json changed since); then
            ``calibration_note_`` says why, every prediction has ``trusted`` None (unknown: nothing was
            checked) with that reason, and loading logs a warning that says to run ``vidcls calibrate``.
        task_: "single" (one class per video, softmax) or "multilabel" (a label set, one sigmoid per class).
        thresholds_: a multi-label run's decision thresholds (``multilabel.Thresholds``: ``values``
            ``(C,)``, ``source`` calibration | final | default), None for a single-label run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        device: str = "auto",
        weights: str | os.PathLike | None = None,
        tta: str = "auto",
        decode_workers: int = 0,
    ) -> None:
        if tta not in TTA_SETTINGS:
            raise ConfigError(f"--tta must be one of {', '.join(TTA_SETTINGS)}; got {tta!r}")
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir} is not a run directory; train one with `vidcls train`")
        self.device = resolve_device(device)
        self.weights = None if weights is None else Path(weights)
        self.decode_workers = max(0, int(decode_workers))
        run = RunDir(self.run_dir)
        choice = run.read_final()
        self.choice_ = choice
        self.source_ = choice.source
        self.members_ = list(choice.members)
        self.tta_modes_ = list(choice.tta_modes)
        self.tta_used_ = bool(choice.tta_used) if tta == "auto" else tta == "on"
        self.views_ = list(self.tta_modes_) if self.tta_used_ else [ORIGINAL]
        # each served model from the file final.json says its index means (a best.pt, or a snapshot)
        self._models, ckpts = load_members(run, choice, self.members_, self.device)
        first = ckpts[0]
        self.classes_ = list(first["class_names"])
        self.task_ = multilabel.run_task(choice, ckpts, self.run_dir)
        self.feature_dim_ = int(first["feature_dim"])
        self.extractor_ = dict(first.get("extractor") or {})
        cfg = first.get("config") or {}
        self.max_frames_ = first.get("max_frames", cfg.get("max_frames"))
        self.fps_ = sampling_rate(self.extractor_)
        self.window_ = run_window(first)
        self.batch_size_ = int(cfg.get("batch_size") or TrainConfig.batch_size)
        self.batch_frames_ = cfg.get("batch_frames")
        dtype = self.extractor_.get("dtype")
        self._store_dtype = np.dtype(dtype) if dtype in ("float16", "float32") else None
        calibration = run.read_calibration()
        self.calibration_, self.calibration_note_, warning = usable_calibration(
            calibration, self.run_dir, task=self.task_, members=self.members_, views=self.views_
        )
        self.thresholds_: multilabel.Thresholds | None = None
        if self.task_ == multilabel.MULTILABEL:
            self.thresholds_, note = multilabel.served_thresholds(
                self.run_dir,
                calibration=self.calibration_,
                final=getattr(choice, "thresholds", None),
                n_classes=len(self.classes_),
            )
            warning = "\n".join(w for w in (warning, note) if w)  # each line a warning of its own
        for line in (warning or "").splitlines():
            log.warning("%s", line)  # once per load; stderr unless the application set up logging
        self._typicality = run.read_typicality(self.calibration_) if self.calibration_ else None
        self._encoder: FrameEncoder | None = None
        self._selection: tuple[Sampling, Quality] | None = None
        self._encoder_lock = threading.Lock()  # a service may ask from several threads at once

    # ---- loading ----------------------------------------------------------------------------
    @property
    def encoder_(self) -> FrameEncoder:
        """The frame CNN of the run's extractor (built on first use).

        Raises:
            BackboneError: the recorded weights are not on this machine (pass ``weights=PATH.pth`` /
                ``--weights PATH.pth``), other weights were given, or the features were not made by a CNN.
            CheckpointError: the encoder gives features of another dimension than the run's.
        """
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.extractor_, self.weights, self.device, self.feature_dim_)
        return self._encoder

    @property
    def sampling_(self) -> Sampling:
        """The recorded frame sampling (``Sampling``)."""
        return self._frame_selection()[0]

    @property
    def quality_(self) -> Quality:
        """The recorded frame quality filter (``Quality``)."""
        return self._frame_selection()[1]

    def _frame_selection(self) -> tuple[Sampling, Quality]:
        if self._selection is None:
            from ..features.record import selection_from_record

            self._selection = selection_from_record(self.extractor_)
        return self._selection

    def describe(self) -> dict:
        """What this predictor serves, JSON-able (for a model endpoint or a log line)."""
        return {
            "run_dir": str(self.run_dir),
            "classes": list(self.classes_),
            "source": self.source_,
            "members": list(self.members_),
            "tta_used": self.tta_used_,
            "views": list(self.views_),
            "tta_modes": list(self.tta_modes_),
            "max_frames": self.max_frames_,
            "fps": self.fps_,
            "window": {"length": self.window_[0], "unit": self.window_[1]},
            "feature_dim": self.feature_dim_,
            "extractor": dict(self.extractor_),
            "calibration": self.calibration_,
            **({} if self.calibration_ else {"calibration_note": self.calibration_note_}),
            "task": self.task_,
            "thresholds": None if self.thresholds_ is None else self.thresholds_.describe(self.classes_),
            "device": str(self.device),
        }

    # ---- inputs -----------------------------------------------------------------------------
    def _check(self, a: Any, name: str) -> np.ndarray:
        return check_features(a, name, self.feature_dim_, self._store_dtype)

    def _encode(self, paths: list) -> list[dict]:
        return encode_videos(paths, self.encoder_, self.sampling_, self.quality_, self.decode_workers)

    def _thin(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features the model sees, their positions in ``a``): the max_frames rule of training."""
        keep = np.arange(len(a)) if not self.max_frames_ else uniform_indices(len(a), int(self.max_frames_))
        return a[keep], keep

    # ---- the models -------------------------------------------------------------------------
    def _forward(self, arrays: Sequence[np.ndarray], attention: bool) -> tuple[Outputs, list]:
        """The served members' and views' ``Outputs`` of ``arrays`` (logits ``(N, M, V, C)`` float64;
        with ``attention``, per video the mean over members of the original view's attention on the
        frames seen), and per video the positions of those frames in its array."""
        thinned = [self._thin(a) for a in arrays]
        out = forward(
            self._models,
            self.views_,
            [t[0] for t in thinned],
            batch_size=self.batch_size_,
            batch_frames=self.batch_frames_,
            device=self.device,
            attention=attention,
            members=self.members_,
            n_classes=len(self.classes_),
            task=self.task_,
        )
        return out, [t[1] for t in thinned]

    def _probs(self, logits: np.ndarray, calibrated: bool) -> np.ndarray:
        t = float(self.calibration_["temperature"]) if calibrated and self.calibration_ else 1.0
        return served_probs(logits, t, self.task_)

    # ---- the public API ---------------------------------------------------------------------
    def logits_features(self, arrays: Any) -> np.ndarray:
        """Raw logits ``(N, M, V, C)`` float64 of ``arrays`` ((T, D) features): per served member M
        (``members_``) and per served view V (``views_``). The served probabilities are the mean over
        M and V of ``softmax(logits / T)`` (a multi-label run: ``sigmoid``; T = 1 uncalibrated).

        Raises:
            ConfigError / CheckpointError: an input that is not a (T, D) array of the run's D.
        """
        feats = [self._check(a, f"features[{i}]") for i, a in enumerate(as_list(arrays))]
        return self._forward(feats, attention=False)[0].logits

    def predict_proba(self, x: Any, calibrated: bool = True) -> np.ndarray:
        """``(N, C)`` served probabilities (columns: ``classes_``), temperature-scaled when the run has
        a calibration and ``calibrated``: rows sum to 1 (softmax); for a multi-label run each column is
        that class's own sigmoid probability (rows need not sum to 1).

        Raises:
            ExtractError: a video that cannot be decoded (``predict_records`` reports it instead).
            BackboneError / CheckpointError / ConfigError: see the module docstring and ``encoder_``.
        """
        items = gather(x, check=self._check, encode=self._encode, strict=True)
        logits = self._forward([r["features"] for r in items], attention=False)[0].logits
        return self._probs(logits, calibrated)

    def predict(self, x: Any) -> list[str]:
        """The most probable class of each input (a record's ``label``; for a multi-label run the set
        is :meth:`predict_labels`)."""
        return [self.classes_[int(i)] for i in self.predict_proba(x).argmax(axis=1)]

    def predict_labels(self, x: Any) -> list[list[str]]:
        """The label set of each input, most probable first (a record's ``labels``): a multi-label run's
        classes whose calibrated probability reaches its threshold (``thresholds_``; possibly none); for
        a single-label run the most probable class alone.

        Raises:
            as :meth:`predict_proba`.
        """
        p = self.predict_proba(x)
        if self.thresholds_ is None:
            return [[self.classes_[int(i)]] for i in p.argmax(axis=1)]
        return multilabel.label_sets(p, self.thresholds_, self.classes_)

    def explain(self, x: Any) -> list[dict]:
        """Per input, the frames the model saw: ``{"attention": [float], "timestamps_ms": [float | None],
        "index": [int]}`` (attention of the original view, mean over served members; ``index``: the
        frame's position in the input sequence, after ``max_frames`` thinning)."""
        items = gather(x, check=self._check, encode=self._encode, strict=True)
        out, kept = self._forward([r["features"] for r in items], attention=True)
        assert out.attention is not None  # asked for
        return [
            {
                "attention": [float(a) for a in w],
                "timestamps_ms": stamps(r["timestamps_ms"], k),
                "index": [int(i) for i in k],
            }
            for r, k, w in zip(items, kept, out.attention)
        ]

    def predict_segments(
        self, x: Any, window: Any = None, stride: Any = None, *, top_k: int = 3
    ) -> list[dict]:
        """:meth:`predict_records` with what happens when: sliding windows (``"10s"``, 10 frames; None:
        ``window_``, the run's typical length) every ``stride`` (default half), their ``segments`` and
        merged ``spans`` (:mod:`vidcls.predict.segments`)."""
        return segments.predict_segments(self, x, window, stride, top_k=top_k)

    def stream_video(self, path: str | os.PathLike) -> dict:
        """A whole video's features at the run's rate (``fps_``), streamed (``loading.stream_video``)."""
        return stream_video(path, self.encoder_, self.sampling_, self.quality_)

    def predict_records(self, x: Any, top_k: int = 3) -> list[dict]:
        """One JSON-able record per input (the output of ``vidcls predict`` and the HTTP service)::

            {"input", "label", "top_k": [{"class", "probability"}], "probabilities": {class: p},
             "trusted", "trust_reason", "ood_score", "frames": [{"index", "timestamp_ms", "attention"}],
             "timings": {"decode_s", "features_s", "model_s"}, "error", "ood_scores": {name: float | None},
             "ood": {name: {"score", "threshold", "pass"}} | None}

        A multi-label run's records also hold, after ``label`` (the most probable class): ``"task":
        "multilabel"``, ``"labels": [{"label", "probability"}]`` (the label set, most probable first,
        [] when no class reaches its threshold; None for an input not predicted) and
        ``"thresholds_source"`` (calibration | final | default, :mod:`vidcls.predict.multilabel`).

        "trusted": True, False, or None (unknown: the run is not calibrated; :mod:`vidcls.predict.verdict`).
        "ood": every score the verdict checked (energy and, for runs calibrated with it, the feature-space
        typicality) against its threshold, None uncalibrated; "ood_score" is the calibration's logit score
        (energy) alone and "ood_scores" the scores without their thresholds ({} uncalibrated).

        An input that cannot be used (a broken video, a bad array) gives ``error`` (the reason) with
        ``label`` None and never raises; a run that cannot handle videos at all (weights missing,
        another feature dimension) raises BackboneError / CheckpointError; ``top_k`` below 1 raises
        ConfigError (as ``--top-k`` and the service refuse it).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ConfigError(f"top_k must be an integer >= 1 (the classes listed per input), got {top_k!r}")
        items = gather(x, check=self._check, encode=self._encode, strict=False)
        ok = [r for r in items if r["error"] is None]
        t0 = time.perf_counter()
        out, kept = self._forward([r["features"] for r in ok], attention=True)
        logits, attn = out.logits, out.attention
        assert attn is not None  # asked for
        probs = self._probs(logits, calibrated=True)
        scores, verdicts = self._trust_of(logits, [r["features"][k] for r, k in zip(ok, kept)])
        model_s = (time.perf_counter() - t0) / max(1, len(ok))
        done = {id(r): j for j, r in enumerate(ok)}
        records = []
        for r in items:
            if r["error"] is not None:
                failed = error_record(r["input"], r["error"], r["decode_s"], r["features_s"])
                records.append(
                    multilabel.error_fields({**failed, "ood": failed.get("ood")}, self.thresholds_)
                )
                continue
            j = done[id(r)]
            ood = {k: v[j] for k, v in scores.items()} if scores else None
            records.append(
                usable_record(
                    r,
                    probs[j],
                    classes=self.classes_,
                    top_k=int(top_k),
                    trusted=verdicts[j],
                    scores=ood,
                    seen=(kept[j], attn[j]),
                    model_s=model_s,
                    calibration=self.calibration_,
                    thresholds=self.thresholds_,
                )
            )
        return records

    def _trust_of(self, logits: np.ndarray, seen: list) -> tuple[dict | None, list[tuple[bool | None, str]]]:
        """({score name: (N,)} or None, (trusted, reason) per video) (``decide.trust_of``)."""
        cal, note, typ = self.calibration_, self.calibration_note_, self._typicality
        return trust_of(logits, seen, calibration=cal, note=note, typicality=typ, task=self.task_)
