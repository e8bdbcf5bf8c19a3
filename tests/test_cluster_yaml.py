"""cluster.yaml passes the validation `ray up` applies, offline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def load() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return config


def test_cluster_yaml_is_valid_for_ray_up() -> None:
    validate_config(prepare_config(load()))


def test_the_validation_catches_a_typo() -> None:
    config = copy.deepcopy(load())
    config["max_wrokers"] = 3
    with pytest.raises(Exception, match="max_wrokers"):
        validate_config(prepare_config(config))


def test_the_head_starts_rayruns_on_all_interfaces() -> None:
    start = " ".join(load()["head_start_ray_commands"])
    assert "rayruns serve --address auto --host 0.0.0.0" in start
