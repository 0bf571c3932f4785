"""report.html's calibration section shows every OOD check (energy AND typicality) with its threshold
and validation pass rate, how the temperature was fitted, and what a missing calibration means."""

from __future__ import annotations

import json

from vidcls.reporting.report import write_report

CAL = {
    "format": "vidcls-calibration",
    "version": 2,
    "temperature": 0.5744,
    "ece_before": 0.0994,
    "ece_after": 0.0096,
    "nll_before": 0.1046,
    "nll_after": 0.0097,
    "val_videos": 40,
    "ece_bins": 15,
    "temperature_fit": {"method": "map_lognormal", "prior_sigma": 0.5, "mle_temperature": 0.0581},
    "ood": {
        "score": "energy",
        "threshold": 2.0664,
        "val_pass_rate": 0.95,
        "direction": "higher is more in-distribution",
        "scores": ["energy", "typicality"],
        "thresholds": {"energy": 2.0664, "typicality": -4.0347},
        "pass_rates": {"energy": 0.975, "typicality": 0.9625},
    },
}


def section(run_dir) -> str:
    text = write_report(run_dir).read_text()
    return text.split('<section id="calibration">', 1)[1].split("</section>", 1)[0]


def test_both_thresholds_and_pass_rates_are_shown(tmp_path):
    (tmp_path / "config.yaml").write_text("model: bilstm_attn\n")
    (tmp_path / "calibration.json").write_text(json.dumps(CAL))
    s = section(tmp_path)
    assert 'id="ood-table"' in s
    assert "2.066" in s and "-4.035" in s  # both thresholds
    assert "97.5 %" in s and "96.2 %" in s and "95.0 %" in s  # each score's pass rate, and all together
    assert "typicality" in s and "energy" in s
    assert "0.574" in s and "0.058" in s and "log-normal prior" in s  # T, the likelihood-only T


def test_an_old_energy_only_calibration_shows_its_one_check(tmp_path):
    old = {**CAL, "ood": {k: CAL["ood"][k] for k in ("score", "threshold", "val_pass_rate", "direction")}}
    old.pop("temperature_fit")
    (tmp_path / "config.yaml").write_text("model: bilstm_attn\n")
    (tmp_path / "calibration.json").write_text(json.dumps(old))
    s = section(tmp_path)
    assert "2.066" in s and "95.0 %" in s and "typicality" not in s.split('id="ood-table"', 1)[1]


def test_without_calibration_the_report_says_verdicts_are_unknown(tmp_path):
    (tmp_path / "config.yaml").write_text("model: bilstm_attn\n")
    s = section(tmp_path)
    assert "trusted: null" in s and "vidcls calibrate" in s
