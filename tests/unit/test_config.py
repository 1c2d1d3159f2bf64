"""Strict config: unknown keys, wrong types and Literal violations fail at load time, naming the key and options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from pipeline.config import (
    MasksParams,
    ModelConfig,
    Params,
    from_dict,
    load_model_config,
    load_params,
    tiny_variant,
    to_dict,
)
from pipeline.errors import UserError


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write_params(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_unknown_key_names_it_and_the_valid_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, "masks:\n  wrkers: 4\n")
    assert "'wrkers'" in message
    valid = message.split("valid keys:")[1]
    assert [k.strip() for k in valid.split(",")] == sorted(f.name for f in dataclasses.fields(MasksParams))


def test_unknown_section_names_it_and_the_valid_sections(tmp_path: Path) -> None:
    message = error_of(tmp_path, "mask:\n  workers: 4\n")
    assert "'mask'" in message
    for section in (f.name for f in dataclasses.fields(Params)):
        assert section in message.split("valid keys:")[1]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("masks:\n  workers: two\n", "masks.workers", "expected an integer, got 'two'"),
        ("masks:\n  workers: true\n", "masks.workers", "expected an integer, got True"),  # bool is not an int
        ("masks:\n  workers: 2.5\n", "masks.workers", "expected an integer"),
        ("demo:\n  test_digit_share: lots\n", "demo.test_digit_share", "expected a number"),
        ("data:\n  root: 7\n", "data.root", "expected a string, got 7"),
        ("folds: [1, 2]\n", "folds", "expected a mapping"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(tmp_path: Path, text: str, key: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert key in message and expected in message


def test_literal_violation_lists_the_options(tmp_path: Path) -> None:
    message = error_of(tmp_path, "masks:\n  overlap: biggest_first\n")
    assert "masks.overlap" in message and "'biggest_first'" in message
    for option in ("'larger_first'", "'smaller_first'", "'annotation_order'"):
        assert option in message
    message = error_of(tmp_path, "data:\n  on_error: ignore\n")
    assert "data.on_error" in message and "'fail'" in message and "'skip'" in message
    # dvc.yaml has stages for two pseudo-label rounds: a third is refused when the params are read
    message = error_of(tmp_path, "pseudo:\n  rounds: 3\n")
    assert "pseudo.rounds" in message and "0, 1, 2" in message


def test_valid_values_are_converted(tmp_path: Path) -> None:
    # (demo.test_digit_share: 1 was the example until 1 became out of range: 0 < share < 1)
    p = load_params(write_params(tmp_path, "pseudo:\n  threshold: 1\nmasks:\n  crowd: ignore\n"))
    assert p.pseudo.threshold == 1.0 and isinstance(p.pseudo.threshold, float)
    assert p.masks.crowd == "ignore" and p.masks.workers == MasksParams().workers  # defaults fill the rest
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.masks.workers = 3  # type: ignore[misc]


def test_empty_file_gives_defaults_and_bad_files_are_named(tmp_path: Path) -> None:
    assert load_params(write_params(tmp_path, "")) == Params()
    with pytest.raises(UserError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    message = error_of(tmp_path, "masks: [\n")
    assert "invalid YAML" in message


def test_repo_params_yaml_loads_with_every_value(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    loaded = to_dict(params)
    for section, values in raw.items():
        for key, value in values.items():
            assert loaded[section][key] == value, f"{section}.{key}"


def test_yaml_is_never_evaluated(tmp_path: Path) -> None:
    message = error_of(tmp_path, "data:\n  root: !!python/object/apply:os.system ['echo pwned']\n")
    assert "invalid YAML" in message


# --------------------------------------------------------------------------------------------------------------
# Model configs and the tiny variant


def model(**kwargs: object) -> ModelConfig:
    return from_dict(ModelConfig, {"decoder": "Unet", "encoder": "resnet18", **kwargs}, "test")


def test_tiny_variant_merges_nested_sections_one_level_deep() -> None:
    cfg = model(
        recipe={"epochs": 30, "batch_size": 16, "loss": [{"name": "dice", "weight": 0.5}]},
        input_size=[128, 160],
        tiny={"recipe": {"epochs": 1}, "input_size": [32, 32], "encoder_kwargs": {"drop_rate": 0.0}},
    )
    tiny = tiny_variant(cfg)
    assert tiny.recipe.epochs == 1
    assert tiny.recipe.batch_size == 16 and tiny.recipe.loss[0].name == "dice"  # the rest of recipe is kept
    assert tiny.input_size == (32, 32)
    assert tiny.encoder_kwargs == {"drop_rate": 0.0}
    assert tiny.tiny == {}
    assert (tiny.decoder, tiny.encoder) == ("Unet", "resnet18")
    assert cfg.recipe.epochs == 30  # the original is untouched


def test_tiny_variant_is_checked_as_strictly_as_the_config() -> None:
    with pytest.raises(UserError, match="'epoch'.*valid keys"):
        tiny_variant(model(tiny={"recipe": {"epoch": 1}}))
    with pytest.raises(UserError, match="recipe.amp"):
        tiny_variant(model(tiny={"recipe": {"amp": "fp8"}}))


def test_tiny_variant_without_overrides_is_the_same_config() -> None:
    cfg = model(input_size=[64, 64])
    assert tiny_variant(cfg) == cfg


def test_model_config_errors_name_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("decoder: Unet\nencoder: resnet18\nrecipe:\n  loss:\n    - name: dice\n      wieght: 2\n")
    with pytest.raises(UserError) as info:
        load_model_config(path)
    assert str(info.value).startswith(f"{path}.recipe.loss[0]: unknown key 'wieght'")
    path.write_text("decoder: Unet\nencoder: resnet18\ninput_size: [64]\n")
    with pytest.raises(UserError, match="input_size: expected 2 items"):
        load_model_config(path)
    path.write_text("encoder: resnet18\n")
    with pytest.raises(UserError, match="missing required key 'decoder'"):
        load_model_config(path)
    path.write_text("decoder: Unet\nencoder: resnet18\nrecipe:\n  grad_clip: null\n  layer_decay: 0.65\n")
    cfg = load_model_config(path)
    assert cfg.recipe.grad_clip is None and cfg.recipe.layer_decay == 0.65


def test_code_defaults_equal_params_yaml() -> None:
    """A key left out of params.yaml (or a Params() built in code) means what params.yaml says."""
    assert load_params(REPO / "params.yaml") == Params()
