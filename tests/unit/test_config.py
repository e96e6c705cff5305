import pytest
import yaml

from pipsteps.config import ConfigError, check_config


@pytest.fixture(scope="module")
def schema(repo):
    return repo / "workflow" / "schemas" / "config.schema.yaml"


@pytest.mark.parametrize("path", ["config.yaml", "tests/e2e/config.yaml", "workflow/configs/paper-llama7b.yaml"])
def test_shipped_configs_are_valid(repo, schema, path):
    check_config(yaml.safe_load((repo / path).read_text()), schema)


def test_unknown_key_is_named(repo, schema):
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["prune"]["target_ration"] = 0.3
    with pytest.raises(ConfigError, match=r"unknown key prune\.target_ration") as e:
        check_config(cfg, schema)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_ratio_outside_open_interval_is_rejected(repo, schema, ratio):
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["prune"]["target_ratio"] = ratio
    with pytest.raises(ConfigError, match=r"prune\.target_ratio"):
        check_config(cfg, schema)


def test_enum_error_lists_allowed_values(repo, schema):
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["prune"]["method"] = "sparsegpt"
    with pytest.raises(ConfigError, match=r"prune\.method = 'sparsegpt' is not allowed \(allowed: pip, pip_oneshot, "
                                          r"taylor"):
        check_config(cfg, schema)


def test_flat_prune_keys_name_their_unit_block(repo, schema):
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["prune"].update(width_score="fisher_diff", layers_per_round=2)
    with pytest.raises(ConfigError) as e:
        check_config(cfg, schema)
    assert str(e.value) == ("config: prune.layers_per_round is now prune.depth.layers_per_round; "
                            "prune.width_score is now prune.width.score")


def test_unit_blocks_are_checked_like_any_key(repo, schema):
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["prune"]["width"]["score"] = "gap_greedy"  # a depth-only score
    with pytest.raises(ConfigError, match=r"prune\.width\.score = 'gap_greedy' is not allowed \(allowed: norm_diff"):
        check_config(cfg, schema)
    cfg["prune"]["width"] = {"rounds": 2, "layers_per_round": 1}
    with pytest.raises(ConfigError, match=r"unknown key prune\.width\.layers_per_round \(allowed in prune\.width: "
                                          r"score, rounds, ranking"):
        check_config(cfg, schema)
