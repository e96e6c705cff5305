"""Step: the edits of the aux-model perturbed views (generators llm_guided and llm), chosen once and cached.

Visits the calibration windows exactly as pipsteps.calibration does (same seed, same order, same cut) and, for
each window until n_samples are usable, lets the auxiliary LM choose the window's edits: llm_guided scores every
candidate edit (pipsteps.guided); llm first asks the instruction model for a rewrite, keeps its valid edits
(pipsteps.llm_edit) and completes the window with the guided generator. A window whose edits leave its first
seq_len target-model tokens unchanged or too short is skipped, as the calibration step skips it. Writes one JSON
file, the window index -> its edits with their scores, which the calibration step applies, and the achieved rate
(llm: the acceptance rate of the instruction model's edits and the number of edits the guided generator filled in).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from pipsteps import cli
from pipsteps.calib_text import AUX_GENERATORS, CalibConfig, candidate_windows, check_config, load_text
from pipsteps.guided import AuxScorer, Scored, choose_edits
from pipsteps.errors import PipError
from pipsteps.files import atomic_path
from pipsteps.io import resolve_device, resolve_dtype, set_threads
from pipsteps.llm_edit import DEFAULT_PROMPT, rewrite, validate
from pipsteps.perturb import Edit, apply_edits, eligible_words
from pipsteps.surgery import load_model, load_tokenizer

log = logging.getLogger("pipsteps.aux_edits")


@dataclass(frozen=True)
class AuxConfig(CalibConfig):
    generator: str = field(default="llm_guided", metadata={"help": "llm_guided or llm"})
    aux_model: str = field(default="embedded:smollm2", metadata={"help": "aux model name (recorded; see --aux-dir)"})
    max_drop: float = field(default=6.0, metadata={"help": "fluency threshold: largest log-likelihood drop (nats)"})
    max_candidates: int = field(default=4, metadata={"help": "candidate edits scored per word"})
    right_context: int = field(default=4, metadata={"help": "tokens after the word the scores look at"})
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "llm: instruction with {text} and {n}"})
    device: str = field(default="auto", metadata={"help": "device of the aux model"})
    threads: int = field(default=2, metadata={"help": "CPU threads"})


def load_aux(aux_dir: Path, cfg: AuxConfig) -> tuple[Any, Any, torch.device]:
    """The aux model and its tokenizer (a prepared model directory), or one line saying why it cannot be loaded."""
    device = resolve_device(cfg.device)
    if not (aux_dir / "config.json").is_file():
        raise PipError(f"could not load the aux model {cfg.aux_model!r} from {aux_dir}: not a prepared model directory")
    try:
        tok = load_tokenizer(aux_dir)
        model = load_model(aux_dir, device, resolve_dtype("auto", device)).eval()
    except PipError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one line naming the model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PipError(f"could not load the aux model {cfg.aux_model!r} from {aux_dir}: {first}") from None
    return model, tok, device


def _entry(chosen: list[Scored], eligible: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"edits": [{"start": s.edit.start, "old": s.edit.old, "new": s.edit.new} for s in chosen],
            "eligible": eligible,
            "record": {"edit_scores": [{"fluency": round(s.fluency, 4), "meaning": round(s.meaning, 4), "by": s.by}
                                       for s in chosen], **extra}}


def llm_edits(cfg: AuxConfig, model: Any, tok: Any, device: torch.device, head: str,
              lexicon: frozenset[str]) -> tuple[list[Edit], dict[str, Any]]:
    """The instruction model's valid edits of a window (text `head`) and what texts.jsonl keeps of its answer."""
    target = round(cfg.rate * len(eligible_words(head, cfg.min_len)))
    answer = rewrite(model, tok, device, cfg.prompt, head, max(target, 1))
    ok, bad = validate(head, answer, lexicon, cfg.min_len)
    return ok, {"llm_input_chars": len(head), "llm_output": answer, "llm_rejected": [list(b) for b in bad]}


def run(cfg: AuxConfig, tokenizer_dir: Path, aux_dir: Path, out: Path) -> dict[str, Any]:
    check_config(cfg)
    if cfg.generator not in AUX_GENERATORS:
        raise PipError(f"the aux-model step serves the generators {', '.join(AUX_GENERATORS)}, not {cfg.generator}")
    if "{text}" not in cfg.prompt:
        raise PipError("perturbation.llm_prompt must contain {text} (where the window goes)")
    set_threads(cfg.threads)
    start = time.perf_counter()
    tok = load_tokenizer(tokenizer_dir)
    corpus, lexicon = load_text(cfg)
    t0 = time.perf_counter()
    model, aux_tok, device = load_aux(aux_dir, cfg)
    load_s = time.perf_counter() - t0
    scorer = AuxScorer(model, aux_tok, device, cfg.right_context)
    windows: dict[str, Any] = {}
    llm = Counter()  # proposed, accepted, kept, fallback (llm mode)
    reasons: Counter = Counter()
    all_scores: list[Scored] = []
    n_elig = gen_s = 0.0
    for k, text, c_ids, cut in candidate_windows(cfg, tok, corpus):
        if len(windows) == cfg.n_samples:
            break
        head, rng, forced, extra = text[:cut], random.Random(f"{cfg.seed}:{k}"), [], {}
        if cfg.generator == "llm":
            t1 = time.perf_counter()
            forced, extra = llm_edits(cfg, model, aux_tok, device, head, lexicon)
            gen_s += time.perf_counter() - t1
        chosen, elig = choose_edits(head, lexicon, cfg.rate, rng, scorer, min_len=cfg.min_len,
                                    max_candidates=cfg.max_candidates, max_drop=cfg.max_drop, forced=forced)
        p_ids = tok(apply_edits(text, [s.edit for s in chosen]))["input_ids"][: cfg.seq_len]
        if not chosen or len(p_ids) < cfg.seq_len or p_ids == c_ids:
            continue  # skipped by the calibration step too
        if cfg.generator == "llm":
            kept = sum(s.by == "llm" for s in chosen)
            llm.update(proposed=len(forced) + len(extra["llm_rejected"]), accepted=len(forced), kept=kept,
                       fallback=len(chosen) - kept, windows_without=int(kept == 0))
            reasons.update(why for _, _, why in extra["llm_rejected"])
        windows[str(k)] = _entry(chosen, elig, extra)
        all_scores += chosen
        n_elig += elig
    if len(windows) < cfg.n_samples:
        raise PipError(f"calibration text too short: only {len(windows)} usable windows of {cfg.seq_len} tokens "
                       f"in {cfg.source}, need {cfg.n_samples}")
    n = len(all_scores)
    metrics: dict[str, Any] = {
        "generator": cfg.generator, "aux_model": cfg.aux_model, "device": str(device),
        "edits": n, "eligible": int(n_elig), "edit_rate": n / max(n_elig, 1), "target_rate": cfg.rate,
        "fluent_edits": sum(s.fluency >= -cfg.max_drop for s in all_scores),
        "mean_fluency": sum(s.fluency for s in all_scores) / max(n, 1),
        "mean_meaning": sum(s.meaning for s in all_scores) / max(n, 1),
        "candidates_scored": scorer.scored, "aux_load_s": round(load_s, 3)}
    if cfg.generator == "llm":
        metrics |= {"llm_proposed": llm["proposed"], "llm_accepted": llm["accepted"],
                    "acceptance_rate": llm["accepted"] / max(llm["proposed"], 1), "llm_kept": llm["kept"],
                    "fallback_edits": llm["fallback"], "windows_without_llm_edit": llm["windows_without"],
                    "rejected_by_reason": dict(reasons.most_common()),
                    "generation_s": round(gen_s, 3)}
    metrics["wall_s"] = round(time.perf_counter() - start, 3)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"config": asdict(cfg), "metrics": metrics, "windows": windows},
                                  ensure_ascii=False, indent=1) + "\n")
    log.info("aux-model edits (%s, %s): %d windows, achieved edit rate %.3f (target %.3f), %d of %d edits fluent, "
             "%d candidates scored, aux model loaded in %.1fs, %.1fs in all", cfg.generator, cfg.aux_model,
             len(windows), metrics["edit_rate"], cfg.rate, metrics["fluent_edits"], n, scorer.scored, load_s,
             metrics["wall_s"])
    if cfg.generator == "llm":
        log.info("llm: %d edits proposed, %d valid (acceptance rate %.3f), %d kept, %d filled in by the guided "
                 "generator; rejected: %s", llm["proposed"], llm["accepted"], metrics["acceptance_rate"],
                 llm["kept"], llm["fallback"], dict(reasons.most_common()))
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tokenizer", required=True, type=Path, help="target model directory (its tokenizer)")
        p.add_argument("--aux-dir", required=True, type=Path, help="prepared aux model directory")
        p.add_argument("--out", required=True, type=Path, help="output edits JSON (with the metrics)")

    cfg, ns = cli.parse(AuxConfig, argv, __doc__.splitlines()[0], extra)
    run(cfg, ns.tokenizer, ns.aux_dir, ns.out)


if __name__ == "__main__":
    cli.main_wrapper(main)
