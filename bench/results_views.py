"""The perturbed views of a protocol's cells, from the calibration records of their result JSONs (bench/compare.py):
views whose token ids came out identical, and how many of the instruction model's edits the `llm` view kept."""

from __future__ import annotations

from results_stats import Result, fmt, pct


def same_views(cells: list[Result]) -> list[str]:
    """Pairs of perturbed views whose calibration text came out identical (same calibration hash): their variants
    are the same runs, not independent evidence."""
    views = sorted({v for c in cells for v in c.get("calibration", {})})
    lines = []
    for i, a in enumerate(views):
        for b in views[i + 1:]:
            both = [c for c in cells if {a, b} <= set(c.get("calibration", {}))]
            same = sum(c["calibration"][a]["calibration_hash"] == c["calibration"][b]["calibration_hash"]
                       for c in both)
            if same:
                lines.append(f"The `{b}` view is the `{a}` view's calibration text (same calibration hash) in {same} "
                             f"of {len(both)} cells: there, `@{b}` variants repeat the `@{a}` ones.")
    return lines + [""] if lines else []


def llm_views(cells: list[Result]) -> list[str]:
    """The views made by the instruction model (generator `llm`) in any cell."""
    return sorted({v for c in cells for v, rec in c.get("calibration", {}).items() if rec.get("generator") == "llm"})


def acceptance_table(cells: list[Result]) -> list[str]:
    """Per cell and `llm` view: the edits the instruction model proposed, those that passed validation, and those the
    guided generator filled in. A cell recorded before the counts were kept shows –."""
    views = llm_views(cells)
    if not views:
        return []
    rows = []
    for c in cells:
        for v in views:
            rec = c.get("calibration", {}).get(v) or {}
            vals = ([str(rec["llm_proposed"]), str(rec["llm_accepted"]), pct(rec["acceptance_rate"]),
                     str(rec["fallback_edits"]), fmt(rec["generation_s"], 0)] if "llm_proposed" in rec else ["–"] * 5)
            rows.append(f"| {c['cell']['domain']} s{c['cell']['seed']} | `{v}` | " + " | ".join(vals) + " |")
    return ["Edits of the instruction model (`llm` view): proposed, passed validation (one swap, replacement or "
            "insertion making a lexicon word), the window edits the guided generator filled in, and the wall seconds "
            "of the model's generation:", "",
            "| cell | view | proposed | accepted | acceptance % | filled in by the guided generator | generation s |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def acceptance_note(cells: list[Result]) -> str | None:
    """One sentence over the distinct calibration texts (cells of the same domain and seed share theirs)."""
    seen: dict[tuple, dict] = {}
    for c in cells:
        for v in llm_views([c]):
            rec = c["calibration"][v]
            if "llm_proposed" in rec:
                seen[(v, c["cell"]["domain"], c["cell"]["seed"], rec["calibration_hash"])] = rec
    if not seen:
        return None
    prop, acc = (sum(r[k] for r in seen.values()) for k in ("llm_proposed", "llm_accepted"))
    return (f"The instruction model's edits passed validation {acc} times in {prop} proposals over the {len(seen)} "
            "calibration texts of the `llm` view; the guided generator chose the rest.")
