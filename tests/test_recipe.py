"""Recipes: every packaged YAML validates, bad keys and values are named, `key=value` overrides parse to
typed values, `adapt recipes` lists and shows them, and a run writes its resolved recipe."""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY_RUN
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.recipe import (RECIPES_DIR, Recipe, available_recipes, parse_overrides, recipe_to_yaml,
                          resolve_recipe)
from adapt.tasks import TASKS, get_task


@pytest.mark.parametrize("name", sorted(available_recipes()))
def test_every_packaged_recipe_validates(name):
    recipe = resolve_recipe(name)
    assert recipe.name == name and recipe.output_dir == f"runs/{name}"
    assert recipe.description, "recipes describe themselves for `adapt recipes`"
    assert recipe.task in TASKS
    get_task(recipe)  # the task validates the recipe's task_options


def test_packaged_recipes_are_found():
    assert {"sentiment"} <= set(available_recipes())
    assert all(path.parent == RECIPES_DIR and path.suffix == ".yaml" for path in available_recipes().values())


def test_unknown_key_is_named():
    with pytest.raises(AdaptError, match=r"^override train\.lrr=3e-05: unknown key 'train\.lrr'; see `adapt recipes show`"):
        resolve_recipe("sentiment", [("train.lrr", 3e-5)])
    with pytest.raises(AdaptError, match=r"unknown key 'data\.columns\.sentence'"):
        resolve_recipe("sentiment", [("data.columns.sentence", "text")])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("task: classification\nmodel: m\ntrian:\n  lr: 0.1\n")
    with pytest.raises(AdaptError) as err:
        resolve_recipe(str(path))
    assert str(err.value) == f"{path}: unknown key 'trian'; see `adapt recipes show` for the valid keys"


def test_wrong_type_names_the_key():
    with pytest.raises(AdaptError, match=r"bad value for 'train\.batch_size': Input should be a valid integer"):
        resolve_recipe("sentiment", parse_overrides(["train.batch_size=many"]))
    with pytest.raises(AdaptError, match=r"bad value for 'train\.lr': Input should be greater than 0"):
        resolve_recipe("sentiment", parse_overrides(["train.lr=-1"]))
    with pytest.raises(AdaptError, match=r"bad value for 'train\.mixed_precision'"):
        resolve_recipe("sentiment", parse_overrides(["train.mixed_precision=fp8"]))


def test_task_options_are_validated_by_the_task():
    recipe = resolve_recipe("sentiment", [("task_options.bogus", 1)])
    with pytest.raises(AdaptError, match=r"unknown key 'bogus' for task 'classification'"):
        get_task(recipe)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(AdaptError, match=r"recipe task 'telepathy' is unknown; tasks are: .*classification"):
        get_task(resolve_recipe("sentiment", [("task", "telepathy")]))


def test_overrides_parse_to_typed_values():
    assert parse_overrides(["train.lr=3e-5", "train.lr=1.0e-4", "train.batch_size=16", "train.compile=true",
                            "data.label_names=[neg, pos]", "data.validation=", "train.max_steps=null",
                            "model=org/name", "data.columns.text=a=b", " train.seed =3"]) == [
        ("train.lr", 3e-5), ("train.lr", 1e-4), ("train.batch_size", 16), ("train.compile", True),
        ("data.label_names", ["neg", "pos"]), ("data.validation", None), ("train.max_steps", None),
        ("model", "org/name"), ("data.columns.text", "a=b"), ("train.seed", 3)]
    assert isinstance(parse_overrides(["train.lr=3e-5"])[0][1], float)


def test_overrides_apply_to_the_recipe():
    recipe = resolve_recipe("sentiment", parse_overrides(
        ["train.lr=3e-5", "data.label_names=[bad, good]", "tracking=[]", "data.columns.text=sentence",
         "peft.r=4", "task_options.anything=1"]))
    assert recipe.train.lr == 3e-5 and recipe.data.label_names == ["bad", "good"] and recipe.tracking == []
    assert recipe.data.columns.text == "sentence" and recipe.data.columns.label == "label"
    assert recipe.peft is not None and recipe.peft.r == 4 and recipe.peft.method == "lora"
    assert recipe.task_options == {"anything": 1}


def test_malformed_overrides_are_errors():
    with pytest.raises(AdaptError, match=r"override 'train\.lr' is not of the form key=value \(e\.g\. train\.lr=3e-5\)"):
        parse_overrides(["train.lr"])
    with pytest.raises(AdaptError, match=r"override 'train\.lr\.x': 'lr' is not a section"):
        resolve_recipe("sentiment", [("train.lr.x", 1)])


def test_unknown_recipe_lists_the_recipes():
    with pytest.raises(AdaptError, match=r"unknown recipe 'nope'; choose one of .*sentiment.* or give a path to a YAML file"):
        resolve_recipe("nope")


def test_bad_yaml_files_are_named(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [classification\n")
    with pytest.raises(AdaptError, match=rf"{broken}: line 2: not valid YAML"):
        resolve_recipe(str(broken))
    listing = tmp_path / "list.yaml"
    listing.write_text("- task\n- model\n")
    with pytest.raises(AdaptError, match=rf"{listing}: a recipe must be a YAML mapping"):
        resolve_recipe(str(listing))


def test_resolved_yaml_round_trips():
    recipe = resolve_recipe("sentiment", [("train.lr", 0.25), ("data.label_names", ["a", "b"])])
    assert Recipe.model_validate(yaml.safe_load(recipe_to_yaml(recipe))) == recipe


def test_recipes_command_lists_every_recipe():
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split()[:5] == ["recipe", "task", "model", "train", "data"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines}
    assert set(rows) == set(available_recipes())
    assert rows["sentiment"] == ["classification", "embedded:minilm", "embedded:rotten_tomatoes"]


def test_recipes_show_applies_overrides():
    result = CliRunner().invoke(app, ["recipes", "show", "sentiment", "train.lr=0.1", "data.columns.text=sentence"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 0.1 and shown["data"]["columns"]["text"] == "sentence"
    assert shown["train"]["batch_size"] == 32 and shown["output_dir"] == "runs/sentiment"  # defaults filled in
    assert Recipe.model_validate(shown) == resolve_recipe("sentiment", [("train.lr", 0.1), ("data.columns.text", "sentence")])


def test_recipes_show_rejects_unknown_keys():
    result = CliRunner().invoke(app, ["recipes", "show", "sentiment", "train.lrr=0.1"])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("unknown key 'train.lrr'; see `adapt recipes show` for the valid keys")
    assert result.stdout == ""


def test_run_writes_its_resolved_recipe(tiny_run, tiny_bert, sentiment_csv_shared):
    run_dir, _ = tiny_run
    written = (run_dir / "recipe.yaml").read_text()
    recipe = resolve_recipe(str(run_dir / "recipe.yaml"))
    expected = resolve_recipe("sentiment", [("model", str(tiny_bert)), ("data.train", str(sentiment_csv_shared)),
                                            ("output_dir", str(run_dir)), *TINY_RUN])
    assert recipe == expected and recipe_to_yaml(expected) == written
    assert recipe.tracking == [] and recipe.train.max_steps == 6 and recipe.data.label_names == ["negative", "positive"]
