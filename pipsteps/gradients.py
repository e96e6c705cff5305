"""Step: the dense model's gradients for one calibration view (`--paired`: the per-sample statistic S of the
clean view against the perturbed one), as one safetensors file and a metrics JSON (the formulas: pipsteps.grads).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli
from pipsteps.grads import GradConfig, load_for_grads, write_view
from pipsteps.files import atomic_outputs, write_json
from pipsteps.io import Timer, set_threads


def run(cfg: GradConfig, model_dir: Path, calib: Path, out: Path, paired: Path | None = None,
        metrics_out: Path | None = None) -> dict[str, Any]:
    """Mean-loss gradients of the view `calib`; with `paired` (the perturbed view), the per-sample statistic S of
    `calib` (the clean view) against it. With `metrics_out`, the record ({config, **metrics}) is written there, and
    the gradient file and the record become final together, once both are complete (files.atomic_outputs)."""
    set_threads(cfg.threads)
    with atomic_outputs(out, metrics_out) as (tmp, tmp_metrics):
        with Timer() as t:
            metrics = write_view(load_for_grads(model_dir, cfg), calib, cfg, tmp, paired)
        metrics.update(wall_s=t.seconds, peak_mem_mb=t.peak_mem_mb)  # the model's load included
        if tmp_metrics is not None:
            write_json(tmp_metrics, {"config": asdict(cfg), **metrics})
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="model directory of this round")
        p.add_argument("--calib", required=True, type=Path, help="calibration view (safetensors input_ids)")
        p.add_argument("--paired", type=Path, default=None,
                       help="perturbed view: write the per-sample squared difference against it (view psdiff)")
        p.add_argument("--out", required=True, type=Path, help="output gradients (safetensors)")
        p.add_argument("--metrics", required=True, type=Path, help="output metrics JSON")

    cfg, ns = cli.parse(GradConfig, argv, __doc__.splitlines()[0], extra)
    run(cfg, ns.model, ns.calib, ns.out, ns.paired, metrics_out=ns.metrics)


if __name__ == "__main__":
    cli.main_wrapper(main)
