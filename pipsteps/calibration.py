"""Step: calibration data, a clean view and a perturbed view of the same n text windows (docs/method.md).

The corpus (rows joined with "\\n\\n") is cut into consecutive windows of seq_len + margin tokens snapped to word
boundaries; n of them are drawn with the seed. The words inside each window's first seq_len tokens are perturbed
(rule_based: seeded real-word one-character edits, see pipsteps.perturb; llm_guided and llm: the edits an
auxiliary LM chose in an earlier step, read from its edits file, see pipsteps.aux_edits; token_noise replaces token
ids instead) and both views are tokenized independently and truncated to exactly seq_len tokens, so neither needs
padding. With `draws` = k > 1 every window is perturbed k times (independent draws): the
perturbed view then has n·k rows, draw j of window i at row i·k + j, so its mean gradient and mean loss average
over the draws. Writes `clean.safetensors` (input_ids, int64, (n, seq_len)), `perturbed.safetensors` ((n·k,
seq_len)), `control.safetensors` (n further clean windows, disjoint from the clean ones, for the
`noise_control` score: clean vs another clean batch instead of clean vs perturbed), `texts.jsonl` (both texts
and the edits, for humans) and a metrics JSON with the achieved edit rate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from pipsteps import cli
from pipsteps.errors import PipError
from pipsteps.files import atomic_path, write_json
from pipsteps.io import Timer
from pipsteps.calib_text import AUX_GENERATORS, GENERATORS, CalibConfig, candidate_windows, check_config, load_text
from pipsteps.perturb import Edit, apply_edits, perturb_text, token_noise
from pipsteps.surgery import load_tokenizer

log = logging.getLogger("pipsteps.calibration")


def _perturb(cfg: CalibConfig, tok: Any, lexicon: Any, text: str, c_ids: list[int], cut: int,
             rng: random.Random) -> tuple[str, list[int], list, int, int]:
    """One perturbation draw of a window: (perturbed text, its first seq_len token ids, edits, eligible words,
    changed words/tokens). Only words before character `cut` (inside the first seq_len tokens) are edited."""
    if cfg.generator == "token_noise":
        p_ids = token_noise(c_ids, cfg.rate, len(tok), rng)
        return text, p_ids, [], len(c_ids), sum(a != b for a, b in zip(c_ids, p_ids))
    if cfg.generator == "rule_based":
        head, edits, elig = perturb_text(text[:cut], lexicon, cfg.rate, rng, cfg.min_len)
        p_text = head + text[cut:]
        return p_text, tok(p_text)["input_ids"][: cfg.seq_len], edits, elig, len(edits)
    raise PipError(f"unknown perturbation generator {cfg.generator!r}; allowed: {', '.join(GENERATORS)}")


def _apply_aux(cfg: CalibConfig, tok: Any, text: str, c_ids: list[int], cut: int,
               entry: dict | None) -> tuple[str, list[int], list, int, int]:
    """The aux-model edits of a window (its entry of the edits file) applied to its text; no entry: the aux
    step rejected the window (it is skipped here too)."""
    if entry is None:
        return text, c_ids, [], 0, 0
    edits = [Edit(e["start"], e["old"], e["new"]) for e in entry["edits"]]
    if any(e.start + len(e.old) > cut or text[e.start:e.start + len(e.old)] != e.old for e in edits):
        raise PipError("the aux-model edits file does not match this calibration text (rerun the aux step)")
    p_text = apply_edits(text, edits)
    return p_text, tok(p_text)["input_ids"][: cfg.seq_len], edits, entry["eligible"], len(edits)


def read_edits(path: Path, cfg: CalibConfig) -> dict[str, Any]:
    """The aux step's edits file, checked against this calibration's settings."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    made_for = data.get("config", {})
    differ = [k for k in asdict(cfg) if made_for.get(k) != getattr(cfg, k)]
    if differ:
        raise PipError(f"the aux-model edits file {path} was made for other calibration settings "
                       f"({', '.join(differ)}): rerun the aux step")
    return data


def run(cfg: CalibConfig, tokenizer_dir: Path, out_dir: Path, edits_file: Path | None = None) -> dict[str, Any]:
    """`edits_file`: the edits chosen by the aux model (pipsteps.aux_edits), needed by llm_guided and llm."""
    check_config(cfg)
    if (cfg.generator in AUX_GENERATORS) != (edits_file is not None):
        raise PipError(f"perturbation.generator {cfg.generator} {'needs' if edits_file is None else 'takes no'} "
                       "aux-model edits file (--edits)")
    with Timer() as t:
        tok = load_tokenizer(tokenizer_dir)
        corpus, lexicon = load_text(cfg)
        aux = read_edits(edits_file, cfg) if edits_file else None
        clean, pert, control, records, n_edit, n_elig = [], [], [], [], 0, 0
        for k, text, c_ids, cut in candidate_windows(cfg, tok, corpus):
            if len(control) == cfg.n_samples:
                break
            if len(clean) == cfg.n_samples:  # the clean batch is complete: the next windows form the control view
                control.append(c_ids)
                continue
            if aux is not None:
                draws = [_apply_aux(cfg, tok, text, c_ids, cut, aux["windows"].get(str(k)))]
            else:
                sample_rng = random.Random(f"{cfg.seed}:{k}")
                draws = [_perturb(cfg, tok, lexicon, text, c_ids, cut, sample_rng) for _ in range(cfg.draws)]
            if any(len(d[1]) < cfg.seq_len or d[1] == c_ids for d in draws):
                continue  # rare: window came out short, or had no editable word; take the next one
            clean.append(c_ids)
            for j, (p_text, p_ids, edits, elig, n_changed) in enumerate(draws):
                pert.append(p_ids)
                n_edit, n_elig = n_edit + n_changed, n_elig + elig
                records.append({"window": k, "draw": j, "clean": text, "perturbed": p_text, "eligible_words": elig,
                                "edits": [[e.old, e.new] for e in edits],
                                **(aux["windows"][str(k)]["record"] if aux is not None else {}),
                                "clean_tokens": tok.decode(c_ids), "perturbed_tokens": tok.decode(p_ids)})
        if len(clean) < cfg.n_samples:
            raise PipError(f"calibration text too short: only {len(clean)} usable windows of {cfg.seq_len} tokens "
                           f"in {cfg.source}, need {cfg.n_samples}")
        if len(control) < cfg.n_samples:
            log.warning("the control view (score noise_control) has %d windows, fewer than n_samples=%d: the corpus "
                        "has no more windows outside the clean ones", len(control), cfg.n_samples)
        if not control:
            log.warning("no window is left for the control view: it repeats the clean view (noise_control is then 0)")
            control = clean
        views = (("clean", clean), ("perturbed", pert), ("control", control))
        ids = {v: torch.tensor(x, dtype=torch.int64) for v, x in views}  # (n, L); perturbed (n·k, L)
        digest = hashlib.sha256(ids["clean"].numpy().tobytes() + ids["perturbed"].numpy().tobytes()).hexdigest()[:16]
        meta = {"source": cfg.source, "seed": str(cfg.seed), "draws": str(cfg.draws), "calibration_hash": digest}
        out_dir.mkdir(parents=True, exist_ok=True)
        for view, x in ids.items():
            with atomic_path(out_dir / f"{view}.safetensors") as tmp:
                save_file({"input_ids": x}, str(tmp), metadata={**meta, "view": view})
        with atomic_path(out_dir / "texts.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    rate = n_edit / max(n_elig, 1)
    log.info("calibration: %d x %d tokens, lexicon %d words, achieved edit rate %.3f (target %.3f)",
             cfg.n_samples, cfg.seq_len, len(lexicon), rate, cfg.rate)
    if rate < 0.5 * cfg.rate:
        log.warning("achieved edit rate %.3f is far below the target %.3f: the lexicon is too small for this text "
                    "(add a word list with perturbation.wordlist)", rate, cfg.rate)
    if aux is not None:
        log.info("aux-model edits (%s): %s", cfg.generator, json.dumps(aux["metrics"]))
    return {"n_samples": cfg.n_samples, "seq_len": cfg.seq_len, "draws": cfg.draws, "edit_rate": rate,
            "target_rate": cfg.rate,
            "edits": n_edit, "eligible": n_elig, "lexicon_size": len(lexicon), "calibration_hash": digest,
            "token_diff_fraction": float((ids["clean"].repeat_interleave(cfg.draws, 0) != ids["perturbed"])
                                         .float().mean()),
            "control_samples": len(control),
            **({"aux": aux["metrics"]} if aux is not None else {}),
            "wall_s": t.seconds}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tokenizer", required=True, type=Path, help="model directory holding the tokenizer")
        p.add_argument("--out-dir", required=True, type=Path, help="directory for the two views and texts.jsonl")
        p.add_argument("--metrics", required=True, type=Path, help="output metrics JSON")
        p.add_argument("--edits", type=Path, default=None, help="aux-model edits file (llm_guided, llm)")

    cfg, ns = cli.parse(CalibConfig, argv, __doc__.splitlines()[0], extra)
    metrics = run(cfg, ns.tokenizer, ns.out_dir, ns.edits)
    write_json(ns.metrics, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
