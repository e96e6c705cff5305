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
