"""Pipeline names map to files in one folder and nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import InvalidInputError, NotFoundError
from serve_apps.gateway.routes_pipelines import known, pipeline_file


def test_a_name_resolves_to_its_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "orders.yaml").write_text("name: orders\n")
    (tmp_path / "clicks.yml").write_text("name: clicks\n")
    assert pipeline_file(tmp_path, "orders") == tmp_path / "orders.yaml"
    assert pipeline_file(tmp_path, "clicks") == tmp_path / "clicks.yml"
    assert known(tmp_path) == ["clicks", "orders"]


@pytest.mark.parametrize("name", ["../secrets", "a/b", "", "x" * 101, "/etc/passwd"])
def test_names_that_could_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInputError):
        pipeline_file(tmp_path, name)


def test_an_unknown_pipeline_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "orders.yaml").write_text("name: orders\n")
    with pytest.raises(NotFoundError, match="known pipelines: orders"):
        pipeline_file(tmp_path, "nope")
