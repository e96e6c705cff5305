"""The registry of methods and scores (pipsteps.methods) is the one place their names live: the schema's allowed
values, the workflow's method wildcard and the torch steps' formula tables all match it, and a new score is one
registry entry."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipsteps import config, methods, scores, width_scores

REPO = Path(__file__).resolve().parents[2]
PRUNE = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]["prune"]


def test_schema_allows_exactly_the_registry_names():
    props = PRUNE["properties"]
    assert props["method"]["enum"] == list(methods.METHODS)
    assert props["depth"]["properties"]["score"]["enum"] == list(methods.DEPTH_SCORES)
    assert props["width"]["properties"]["score"]["enum"] == list(methods.WIDTH_SCORES)
    grid_item = props["grid"]["properties"]["methods"]["items"]
    assert props["baselines"]["items"]["pattern"] == grid_item["pattern"] == methods.SCHEMA_PATTERN


def test_registry_tables_are_consistent():
    assert set(methods.PIP_METHODS) == {"pip", "pip_oneshot"}
    assert set(methods.ONESHOT) == {"pip_oneshot", "block_influence"}
    assert set(methods.DEPTH_ONLY) == {"block_influence", "block_influence_iter", "sleb"}
    for name, s in methods.SCORES.items():
        assert s.units, f"{name} has no unit"
        assert all(v in methods.GRAD_SOURCES for v in s.needs.grads), name
        assert s.kind in ("gradient", "ablation", "influence", "random"), name
    for name, m in methods.METHOD_TABLE.items():
        assert m.score is None or m.score in methods.SCORES, name
    # the torch steps' formula tables are views of the registry, not copies
    assert scores.DEPTH_SCORES == {n: s.depth for n, s in methods.SCORES.items() if s.depth}
    assert width_scores.WIDTH_SCORES == {n: s.width for n, s in methods.SCORES.items() if s.width}
    assert set(width_scores.NEEDS) == {*methods.WIDTH_SCORES, "taylor", "taylor_sq", "magnitude", "random"}


@pytest.mark.parametrize("name,ok", [
    ("pip", True), ("pip_oneshot", True), ("pip-fisher_diff", True), ("pip_oneshot-gap_greedy", True),
    ("pip-taylor_both", True), ("taylor", True), ("taylor_sq", True), ("random", True), ("random_s12", True),
    ("block_influence_iter", True), ("sleb", True),
    ("pip-bogus", False), ("taylor-norm_diff", False), ("random_sx", False), ("pip-", False), ("Pip", False),
    ("pip-taylor", False),  # a baseline's score is not a PIP score
])
def test_wildcard_accepts_exactly_the_registry_variants(name, ok):
    assert bool(re.fullmatch(methods.WILDCARD_RE, name)) is ok


def test_schema_pattern_leaves_unknown_pip_scores_to_the_config_check():
    """The schema pattern takes any pip-SCORE, so that pipsteps.config names the unknown score and the allowed ones."""
    assert re.fullmatch(methods.SCHEMA_PATTERN, "pip-bogus") and not re.fullmatch(methods.SCHEMA_PATTERN, "random_s1")
    with pytest.raises(config.ConfigError, match="unknown PIP score 'bogus'.*fisher_diff"):
        config.check_methods({"prune": {"unit": "width", "grid": {"units": ["width"], "methods": ["pip-bogus"]}}}, {})


def test_needs_and_applies_follow_the_units():
    assert methods.needs("width", "pip", "taylor_diff").grads == ("clean", "perturbed")
    assert methods.needs("depth", "pip-gap_greedy", "norm_diff").calib == ("clean", "perturbed")
    assert methods.needs("depth", "block_influence", "norm_diff").influence
    assert methods.applies("depth", "sleb") and not methods.applies("width", "sleb")
    assert methods.applies("width", "pip-taylor_gap") and not methods.applies("depth", "pip-taylor_gap")
    with pytest.raises(methods.MethodError, match="unit depth"):
        methods.needs("width", "block_influence_iter", "taylor_diff")
    with pytest.raises(methods.MethodError, match="unknown width score 'gap_greedy'"):
        methods.needs("width", "pip", "gap_greedy")


def test_a_new_score_is_one_registry_entry(tmp_path):
    """Add one entry to a copy of the registry: the wildcard, the config check, the plan's unit check and the width
    scorer all take it, and its group sums equal a direct computation."""
    src = (REPO / "pipsteps" / "methods.py").read_text()
    anchor = '    # baseline scores\n'
    assert anchor in src
    entry = '    "abs_w": Score(Needs(), width=lambda w, gc, gp: w.abs()),  # Σ|W|\n'
    (tmp_path / "methods_new.py").write_text(src.replace(anchor, entry + anchor))
    script = textwrap.dedent(f"""
        import importlib.util, re, sys
        spec = importlib.util.spec_from_file_location("pipsteps.methods", {str(tmp_path / "methods_new.py")!r})
        m = importlib.util.module_from_spec(spec); sys.modules["pipsteps.methods"] = m; spec.loader.exec_module(m)
        import torch
        from pipsteps import config, width_scores
        from pipsteps.tiny import tiny_model
        assert re.fullmatch(m.WILDCARD_RE, "pip-abs_w") and m.applies("width", "pip-abs_w")
        assert not m.applies("depth", "pip-abs_w")
        config.check_methods({{"prune": {{"unit": "width", "grid": {{"units": ["width"], "methods": ["pip-abs_w"]}}}}}},
                             {{}})
        model = tiny_model("llama", seed=1)
        ws = width_scores.width_scores(model, "abs_w")
        mlp = model.model.layers[2].mlp
        direct = (mlp.gate_proj.weight.abs().sum(1) + mlp.up_proj.weight.abs().sum(1)
                  + mlp.down_proj.weight.abs().sum(0)).double()
        assert torch.allclose(torch.tensor(ws.mlp[2], dtype=torch.float64), direct, rtol=1e-6), (ws.mlp[2], direct)
        print("ok", len(ws.attn), len(ws.mlp[2]))
    """)
    ok = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and ok.stdout.startswith("ok 6 "), ok.stdout + ok.stderr
