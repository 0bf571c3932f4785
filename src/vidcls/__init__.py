"""vidcls: two-stage video classification (frozen frame CNN features -> temporal model).

The public API, imported lazily so that ``import vidcls`` (and folder scanning) does not load torch::

    from vidcls import load_config, fit, load
    summary = fit(load_config("exp.yaml", {"features_dir": "feats"}), "runs/exp")
    predictor = load("runs/exp")  # serves the run's recorded final choice
    labels = predictor.predict(["clip.mp4", "other.mkv"])
"""

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "vidcls.config",
    "TrainConfig": "vidcls.config",
    "VidclsError": "vidcls.errors",
    "fit": "vidcls.training.fit",
    "build_model": "vidcls.models",
    "list_models": "vidcls.models",
    "evaluate_run": "vidcls.evaluation.evaluate",
    "load": "vidcls.predict.predictor",
    "Predictor": "vidcls.predict.predictor",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidcls' has no attribute {name!r}")
