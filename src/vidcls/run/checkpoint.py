"""Checkpoint files: atomic writes, validated loads, and the fallback a resumed run needs.

A checkpoint is a dict that can rebuild the model and refuse mismatched input on its own:
``config`` (the resolved TrainConfig), ``model`` (build_model kwargs), ``class_names``,
``feature_dim``, ``extractor``, ``max_frames`` (videos longer than this were thinned uniformly to it,
``vidcls.utils.sampling.uniform_indices``; prediction must do the same), ``model_state``; ``last.pt``
and the periodic ones also carry the optimiser, scheduler, epoch, early-stopping state, history and
RNG states.
"""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..utils.fs import atomic_write_bytes
from .layout import LAST, PERIODIC_RE

FORMAT = "vidcls-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically (temp file + fsync + rename): a kill never leaves half a file."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a vidcls checkpoint.

    Raises:
        CheckpointError: missing, truncated/corrupt, or not written by vidcls.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); "
            f"delete it or restore it from a periodic checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vidcls checkpoint")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer vidcls (checkpoint version "
            f"{state['version']}); upgrade vidcls to read it"
        )
    return state


def periodic_checkpoints(ckpt_dir: Path) -> list[Path]:
    """``epoch_NNN.pt`` files, oldest first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("epoch_*.pt") if (m := PERIODIC_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_periodic(ckpt_dir: Path, keep: int) -> None:
    for p in periodic_checkpoints(ckpt_dir)[:-keep]:
        p.unlink(missing_ok=True)


def load_resume_state(ckpt_dir: Path) -> tuple[dict, Path] | None:
    """The newest usable training state: ``last.pt``, else the newest valid periodic checkpoint.

    Returns None when the directory holds no training checkpoint at all.
    """
    candidates = [ckpt_dir / LAST] + periodic_checkpoints(ckpt_dir)[::-1]
    errors = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(
                f"{errors[0]}; resuming from {path} (epoch {state.get('epoch')}) instead", stacklevel=2
            )
        return state, path
    if errors:
        raise CheckpointError("no usable checkpoint to resume from: " + "; ".join(errors))
    return None


def rng_state() -> dict:
    """Every global RNG a training step may touch (dropout uses torch's)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global RandomState is MT19937: its legacy state is a tuple
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
