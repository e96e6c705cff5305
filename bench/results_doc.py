"""Write docs/results.md from the committed result JSONs of a protocol run (bench/compare.py): never typed by hand.

    python bench/results_doc.py [--protocol bench/protocol.yaml] [--results bench/results] [--out docs/results.md]
        [--check]

Per block (unit and ratio): every method's PPL@128 per calibration domain (mean ± sample std over the seeds, and
the per-seed values), the paired comparison of every PIP method with the best non-PIP method of each domain (the
one with the lowest mean primary PPL there) and, where the block runs one, with the noise control of its base
method; the `llm` view's acceptance counts (bench/results_views.py); zero-shot and recovery of the cells' chosen
variants, and the wall time of every cell. For a protocol with a `workspace` (the views protocol), the methods it
shares with that protocol are set beside that protocol's figures of the same cell. Missing cells are listed, never
silently dropped. The claim rule: A beats B only where A wins at least 5 of 6 paired cells (in general ⌈5/6 of the
protocol's domains × seeds⌉) and every cell is present.
`--check` exits 1 when the file on disk differs from what the JSONs give (the regeneration test).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from protocol import REPO, cell_stem
from results_stats import (Result, base_method, comparisons, fmt, load_results, mean_std, noise_comparisons,
                           paired_cells, pct, rerun_agreement, signed, view_comparisons)
from results_views import acceptance_note, acceptance_table, same_views


def block_section(block: dict, cells: list[Result], proto: dict, expected_names: list[str]) -> list[str]:
    unit, ratio = block["unit"], float(block["ratio"])
    primary = proto["eval"]["primary"]
    domains, seeds = list(proto["domains"]), proto["seeds"]
    have = {(c["cell"]["domain"], c["cell"]["seed"]): c for c in cells}
    missing = [n for n in expected_names if n not in {cell_name(c) for c in cells}]
    lines = [f"## {unit}, {ratio:g} of the parameters", "",
             f"Cells: {len(cells)} of {len(expected_names)}" + (f"; missing: {', '.join(missing)}" if missing else ""),
             ""]
    if not cells:
        return lines
    methods = list(dict.fromkeys(base_method(m) for c in cells for m in c["variants"]))
    for ds in proto["eval"]["ppl"]["datasets"]:
        lines += [f"PPL@{proto['eval']['ppl']['seq_len']} on `{ds}`" + (" (primary)" if ds == primary else "")
                  + ": mean ± std over the seeds (per seed " + " / ".join(f"s{s}" for s in seeds) + ")", "",
                  "| method | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
        for m in methods:
            row = []
            for d in domains:
                vals = [have[(d, s)]["variants"][m]["ppl"][ds] if (d, s) in have and m in have[(d, s)]["variants"]
                        else None for s in seeds]
                got = [v for v in vals if v is not None]
                row.append(f"{mean_std(got)} ({' / '.join(fmt(v) for v in vals)})" if got else "–")
            lines.append(f"| `{m}` | " + " | ".join(row) + " |")
        lines.append("")
    best, rows = comparisons(cells, proto)
    lines += [f"Paired comparison on `{primary}` with the best non-PIP method of each domain ("
              + ", ".join(f"{d}: `{b}`" for d, b in best.items()) + "). A relative difference below 0 means the PIP "
              "method has the lower perplexity.", "",
              "| PIP method | wins | mean relative difference % | verdict |", "|---|---|---|---|"]
    lines += [f"| `{r['method']}` | {r['wins']} of {r['n']} | {pct(r['rel'])} | {r['verdict']} |" for r in rows]
    lines.append("")
    lines += pair_table(view_comparisons(cells, proto),
                        "Each PIP method on an LLM-made view against the same method on the rule-based view, paired on "
                        f"`{primary}` (below 0: the LLM-made view gives the lower perplexity):")
    lines += pair_table(noise_comparisons(cells, proto),
                        "Each PIP method against the noise control of its base method (the same rounds with a second "
                        "clean batch in place of the perturbed view; its score is `fisher_diff` at width, `norm_diff` "
                        f"at depth), paired on `{primary}` (below 0: the PIP method gives the lower perplexity): does "
                        "the perturbed view carry more than gradient noise?")
    lines += same_views(cells)
    lines += acceptance_table(ordered(cells, seeds, domains))
    lines += zero_shot_table(cells, seeds, domains)
    if any(c.get("wall_s", {}).get("recovery") is not None for c in cells):
        lines += recovery_table(cells, primary, seeds, domains)
    return lines


def pair_table(rows: list[dict], caption: str) -> list[str]:
    """A table of paired comparisons of a method with another (view_comparisons, noise_comparisons); none: nothing."""
    if not rows:
        return []
    return [caption, "", "| PIP method | against | wins | mean relative difference % | verdict |",
            "|---|---|---|---|---|",
            *(f"| `{r['method']}` | `{r['base']}` | {r['wins']} of {r['n']} | {pct(r['rel'])} | {r['verdict']} |"
              for r in rows), ""]


def summary(proto: dict, results: list[Result]) -> list[str]:
    """A table of each block's headline comparisons: the best PIP method of every perturbed view and `pip` itself
    (the unit's default score), each against the best baseline, with the claim rule's verdict."""
    expected = paired_cells(proto)
    lines = ["| block | cells | PIP method | wins against the best baseline | mean PPL difference | zero-shot avg / "
             "without BoolQ %, PIP vs baseline | verdict |", "|---|---|---|---|---|---|---|"]
    notes: dict[str, list[str]] = {"view": [], "noise": []}
    for b in proto["blocks"]:
        name = f"{b['unit']} {float(b['ratio']):.0%}"
        cells = block_cells(results, b)
        if not cells:
            lines.append(f"| {name} | 0 of {expected} | – | – | – | – | no cell yet |")
            continue
        best, rows = comparisons(cells, proto)
        ranked = sorted(rows, key=lambda r: r["rel"] if r["rel"] is not None else math.inf)
        top = {}
        for r in ranked:
            top.setdefault(r["method"].partition("@")[2], r)
        shown = [r for r in ranked if r in top.values() or r["method"] == "pip"]
        base = ", ".join(f"`{m}`" for m in dict.fromkeys(best.values()))
        lines += [f"| {name} | {len(cells)} of {expected} | `{r['method']}` | {r['wins']} of {r['n']} ({base}) | "
                  f"{signed(r['rel'])} | {r['zs']} | {r['verdict']} |" for r in shown]
        shown_names = {r["method"] for r in shown}
        for kind, pairs in (("view", view_comparisons), ("noise", noise_comparisons)):
            got = [r for r in pairs(cells, proto) if r["method"] in shown_names]
            if got:
                notes[kind].append(f"{name}: " + "; ".join(f"`{r['method']}` against `{r['base']}` wins {r['wins']} "
                                                           f"of {r['n']}, {signed(r['rel'])}, {r['verdict']}"
                                                           for r in got) + ".")
    heads = {"view": "Against the rule-based view of the same method (paired):",
             "noise": "Against the noise control (a second clean batch in place of the perturbed view, paired):"}
    text = " ".join(" ".join([heads[k], *v]) for k, v in notes.items() if v)
    if text:
        lines += ["", text]
    views = " ".join(x for x in [*same_views(results)[:-1], acceptance_note(results)] if x)
    return lines + (["", views] if views else [])


def rerun_section(proto: dict, results: list[Result], others: list[Result]) -> list[str]:
    """The methods this protocol shares with its workspace protocol, run again here: how far apart the two runs'
    figures are, cell by cell (the floor under any comparison across separate runs)."""
    rows = rerun_agreement(results, others, proto["eval"]["primary"])
    if not rows:
        return []
    commit = lambda r: (r.get("git_commit") or "?")[:7]  # noqa: E731
    primary = proto["eval"]["primary"]
    lines = [f"## Runs shared with `{proto['workspace']}`", "",
             f"The methods that `{proto['workspace']}` also runs in the same cell (the rule-based arms and the "
             "baselines) have their own results here. Where this protocol reused that protocol's cached jobs, or "
             "computed them again bit for bit, the figures are identical; otherwise the difference is how much a "
             f"separate run (another commit, machine or session) moves them. Relative difference of `{primary}` PPL, "
             "this run against the other:", "",
             f"| cell | commit {proto['workspace']} / here | methods | identical | largest difference % | method |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {cell_name(r['cell'])} | {commit(r['other'])} / {commit(r['cell'])} | {r['n']} | {r['same']} | "
              f"{r['rel'] * 100:+.3f} | " + (f"`{r['worst']}` |" if r["rel"] else "– |") for r in rows]
    return lines + [""]


def cell_name(c: Result) -> str:
    k = c["cell"]
    return cell_stem(k["unit"], k["ratio"], k["domain"], k["seed"])


def block_cells(results: list[Result], block: dict) -> list[Result]:
    """The cells of one protocol block (same unit and ratio)."""
    key = (block["unit"], float(block["ratio"]))
    return [r for r in results if (r["cell"]["unit"], float(r["cell"]["ratio"])) == key]


def ordered(cells: list[Result], seeds: list[int], domains: list[str]) -> list[Result]:
    return sorted(cells, key=lambda c: (domains.index(c["cell"]["domain"]), seeds.index(c["cell"]["seed"])))


def zero_shot_table(cells: list[Result], seeds: list[int], domains: list[str]) -> list[str]:
    rows = []
    for c in ordered(cells, seeds, domains):
        parts = []
        for key in ("best_pip", "best_baseline"):
            m = c.get(key)
            zs = c["variants"][m]["zero_shot"] if m else None
            parts.append(f"`{m}` {pct(zs['avg'])} / {pct(zs['avg_wo_boolq'])}" if zs else (f"`{m}` –" if m else "–"))
        rows.append(f"| {c['cell']['domain']} s{c['cell']['seed']} | " + " | ".join(parts) + " |")
    return ["Zero-shot average % / without BoolQ % of each cell's best PIP variant and best baseline (by the primary "
            "PPL):", "", "| cell | best PIP | best baseline |", "|---|---|---|", *rows, ""]


def recovery_table(cells: list[Result], primary: str, seeds: list[int], domains: list[str]) -> list[str]:
    rows, survive, n = [], 0, 0
    for c in ordered(cells, seeds, domains):
        p, b = c.get("best_pip"), c.get("best_baseline")
        vp, vb = c["variants"].get(p) or {}, c["variants"].get(b) or {}
        rp, rb = (vp.get("recovered_ppl") or {}).get(primary), (vb.get("recovered_ppl") or {}).get(primary)
        if rp is not None and rb is not None:
            n, survive = n + 1, survive + ((vp["ppl"][primary] < vb["ppl"][primary]) == (rp < rb))
        rows.append(f"| {c['cell']['domain']} s{c['cell']['seed']} | `{p}` {fmt(vp.get('ppl', {}).get(primary))} → "
                    f"{fmt(rp)} | `{b}` {fmt(vb.get('ppl', {}).get(primary))} → {fmt(rb)} |")
    return [f"LoRA recovery with the same budget, `{primary}` PPL before → after. The order of the two is the same "
            f"after recovery in {survive} of {n} cells.", "", "| cell | best PIP | best baseline |", "|---|---|---|",
            *rows, ""]


def render(proto: dict, results: list[Result], dense: Result | None, protocol_file: str = "protocol.yaml",
           shared: list[Result] | None = None) -> str:
    seeds, domains = proto["seeds"], list(proto["domains"])
    ppl = proto["eval"]["ppl"]
    zs = proto["eval"].get("zero_shot") or {}
    src = f"bench/{protocol_file}"
    out = [f"# Method comparison: {proto['name']}", "",
           f"Generated by `python bench/results_doc.py --protocol {src}` from `bench/results/{proto['name']}/` (run "
           f"by `python bench/compare.py {src}`); do not edit by hand.", "",
           f"Model `{proto['model']}`. Calibration {proto['calibration']['n_samples']} × "
           f"{proto['calibration']['seq_len']} tokens from each domain (" + ", ".join(
               f"{d}: `{v['source']}`" for d, v in proto["domains"].items()) + f"), seeds {seeds}. PPL@{ppl['seq_len']}"
           f" on the first {ppl['max_tokens']} tokens of " + ", ".join(f"`{d}`" for d in ppl["datasets"]) +
           (f"; zero-shot: {len(zs.get('tasks', []))} tasks, first {zs.get('limit')} examples each." if zs else "."),
           "",
           "Claim rule: a method beats another only where it wins at least 5 of the 6 paired cells (2 calibration "
           "domains × 3 seeds, same calibration text and seed for both); otherwise there is no clear difference.", "",
           "## Summary", "", *summary(proto, results), ""]
    if dense:
        z = dense.get("zero_shot")
        out += ["## Dense model", "", "| " + " | ".join(f"PPL `{d}`" for d in dense["ppl"]) +
                " | zero-shot avg % | without BoolQ % |", "|---" * (len(dense["ppl"]) + 2) + "|",
                "| " + " | ".join(fmt(v) for v in dense["ppl"].values()) +
                f" | {pct(z['avg']) if z else '–'} | {pct(z['avg_wo_boolq']) if z else '–'} |", ""]
    else:
        out += ["## Dense model", "", "missing (the dense run has not finished)", ""]
    for b in proto["blocks"]:
        names = [cell_stem(b["unit"], b["ratio"], d, s) for s in seeds for d in domains]
        out += block_section(b, block_cells(results, b), proto, names)
    out += rerun_section(proto, results, shared or [])
    out += ["## Wall time per cell (seconds)", "", "| cell | pruning + PPL | zero-shot | recovery | total |",
            "|---|---|---|---|---|"]
    for r in results:
        w = r.get("wall_s", {})
        out.append(f"| {cell_name(r)} | " + " | ".join(fmt(w.get(k), 0) for k in ("prune_ppl", "zero_shot", "recovery"))
                   + f" | {fmt(sum(w.values()), 0)} |")
    return "\n".join(out) + "\n"


def doc_path(protocol_file: Path) -> Path:
    return REPO / "docs" / (protocol_file.stem.replace("protocol", "results", 1) + ".md")


def readme_with(readme: str, name: str, table: list[str]) -> str:
    """README text with the block between its markers for protocol `name` replaced by `table` (unchanged when the
    README has no such markers)."""
    begin, end = f"<!-- results_doc {name}: generated from bench/results/{name}, do not edit -->", \
        f"<!-- end results_doc {name} -->"
    if begin not in readme or end not in readme:
        return readme
    head, _, rest = readme.partition(begin)
    return head + begin + "\n" + "\n".join(table) + "\n" + end + rest.partition(end)[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", type=Path, default=REPO / "bench" / "protocol.yaml")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--out", type=Path, help="default: docs/results.md for protocol.yaml, docs/results-X.md for "
                   "protocol-X.yaml")
    p.add_argument("--readme", type=Path, default=REPO / "README.md", help="its block between the protocol's "
                   "results_doc markers gets the summary table")
    p.add_argument("--check", action="store_true", help="exit 1 if --out or the README block differs from the "
                   "regenerated text")
    ns = p.parse_args()
    proto = yaml.safe_load(ns.protocol.read_text())
    ns.out = ns.out or doc_path(ns.protocol)
    results, dense = load_results(ns.results / proto["name"])
    other = proto.get("workspace", proto["name"])
    shared = load_results(ns.results / other)[0] if other != proto["name"] else []
    text = render(proto, results, dense, ns.protocol.name, shared)
    readme = ns.readme.read_text() if ns.readme.exists() else ""
    new_readme = readme_with(readme, proto["name"], summary(proto, results))
    if ns.check:
        for path, want, have in ((ns.out, text, ns.out.read_text() if ns.out.exists() else None),
                                 (ns.readme, new_readme, readme)):
            if want != have:
                sys.exit(f"{path} is not what {ns.results / proto['name']} gives: run python bench/results_doc.py "
                         f"--protocol {ns.protocol}")
        return
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(ns.out, text)
    if new_readme != readme:
        atomic_write(ns.readme, new_readme)
    print(f"wrote {ns.out} ({len(results)} cells)" + (f" and the summary in {ns.readme}" if new_readme != readme
                                                      else ""))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    main()
