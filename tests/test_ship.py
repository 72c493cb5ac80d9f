"""Issue 19, shipping: the named recipes are package data (found through importlib.resources, so a wheel install
has them), training progress is plain lines when stdout is not a terminal, and overrides of text keys are taken
literally. (The wheel itself is built and installed by hand: see the issue's closing note.)"""

from __future__ import annotations

import fnmatch
import re
from importlib.resources import files
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.recipe import RECIPES_DIR, available_recipes, parse_overrides, resolve_recipe, resolve_with_flags
from adapt.ui import PlainProgress, training_progress

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "adapt"
SHIPPED_RECIPES = {"emotions", "similarity", "chat", "clm", "clm-instruct", "ner", "pairs", "qa", "sentiment", "summarize", "translate", "translate-encdec", "mlm", "dpo"}


# ---- recipes as package data --------------------------------------------------------------------------
def test_recipes_resolve_through_importlib_resources_inside_the_package():
    assert RECIPES_DIR == files("adapt") / "recipes" == PACKAGE / "recipes"
    recipes = available_recipes()
    assert list(recipes) == sorted(SHIPPED_RECIPES)
    assert {name: Path(str(f)) for name, f in recipes.items()} == {
        name: PACKAGE / "recipes" / f"{name}.yaml" for name in SHIPPED_RECIPES}
    assert not (REPO / "recipes").exists(), "one home for the recipes: src/adapt/recipes/"


def test_every_non_python_file_of_the_package_is_package_data_except_the_compiled_library():
    """What the wheel carries besides modules: pyproject's package data must match every such file in the tree
    (recipes, C sources and headers), and not the machine-specific libadapt_native.so."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["adapt"]
    data_files = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
                        if p.is_file() and p.suffix not in (".py", ".pyc", ".so") and "__pycache__" not in p.parts)
    assert {name for name in data_files if name.startswith("recipes/")} == {
        f"recipes/{name}.yaml" for name in SHIPPED_RECIPES}
    assert [name for name in data_files if not any(fnmatch.fnmatch(name, p) for p in patterns)] == []
    assert not any(fnmatch.fnmatch("speed/native/libadapt_native.so", p) for p in patterns)


def test_named_recipe_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = resolve_recipe("sentiment")
    assert (recipe.task, recipe.model, recipe.data.train) == ("classification", "embedded:minilm",
                                                              "embedded:rotten_tomatoes")
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == sorted(SHIPPED_RECIPES)


def test_without_the_compiled_library_the_kernels_are_off(monkeypatch, tmp_path):
    """A wheel install has no libadapt_native.so: every native caller gets None and takes its PyTorch path."""
    from adapt.speed import native

    monkeypatch.setattr(native, "LIBRARY", tmp_path / "libadapt_native.so")
    native.library.cache_clear()
    try:
        assert native.library() is None
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


# ---- progress -------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def drive(progress, clock: FakeClock, total: int, start: int = 0, log_steps: int = 10, seconds_per_step=1.5):
    """What adapt.train does: a status every `log_steps` steps and at the last, then the step count."""
    with progress:
        bar = progress.add_task("training", total=total, completed=start, status="")
        for step in range(start + 1, total + 1):
            clock.now += seconds_per_step
            if step % log_steps == 0 or step == total:
                progress.update(bar, status=f"loss {1 / step:.4f}  lr {step * 1e-6:.2e}  {64 / 1.5:.1f} samples/s")
            progress.update(bar, completed=step)


def test_progress_without_a_terminal_prints_exact_plain_lines():
    out, clock = StringIO(), FakeClock()
    progress = training_progress(output=Console(file=out, width=40), clock=clock)
    assert isinstance(progress, PlainProgress)
    drive(progress, clock, total=25)
    assert out.getvalue() == (  # never cut to the console's 40 columns
        "training 10/25 steps  loss 0.1000  lr 1.00e-05  42.7 samples/s  elapsed 0:00:15  ETA 0:00:22\n"
        "training 20/25 steps  loss 0.0500  lr 2.00e-05  42.7 samples/s  elapsed 0:00:30  ETA 0:00:07\n"
        "training 25/25 steps  loss 0.0400  lr 2.50e-05  42.7 samples/s  elapsed 0:00:37  ETA 0:00:00\n")


def test_resumed_progress_counts_the_eta_from_the_steps_of_this_process():
    out, clock = StringIO(), FakeClock()
    drive(training_progress(output=Console(file=out), clock=clock), clock, total=4000, start=3980,
          seconds_per_step=30.0)
    assert out.getvalue() == (
        "training 3990/4000 steps  loss 0.0003  lr 3.99e-03  42.7 samples/s  elapsed 0:05:00  ETA 0:05:00\n"
        "training 4000/4000 steps  loss 0.0003  lr 4.00e-03  42.7 samples/s  elapsed 0:10:00  ETA 0:00:00\n")


def test_plain_progress_prints_a_status_once_its_step_is_counted_and_once_only():
    out, clock = StringIO(), FakeClock()
    with PlainProgress(Console(file=out), clock) as progress:
        bar = progress.add_task("training", total=3, completed=0, status="")
        progress.update(bar, completed=1)  # no status yet: nothing to report
        progress.update(bar, status="loss 1.0000")
        assert out.getvalue() == ""
        clock.now += 7200
        progress.update(bar, completed=2)
        progress.update(bar, status="loss 1.0000")  # unchanged: no second line
        progress.update(bar, completed=3)
    assert out.getvalue() == "training 2/3 steps  loss 1.0000  elapsed 2:00:00  ETA 1:00:00\n"


def test_a_terminal_gets_the_rich_bar_and_a_non_main_process_nothing():
    terminal = Console(file=StringIO(), force_terminal=True, force_interactive=True)
    assert isinstance(training_progress(output=terminal), Progress)
    out = StringIO()
    with training_progress(enabled=False, output=Console(file=out)) as silent:
        silent.update(silent.add_task("training", total=2, status=""), completed=2, status="loss 1")
    assert out.getvalue() == ""


def test_finetune_into_a_pipe_logs_readable_progress_lines(tiny_bert, sentiment_csv, adapt_cache, tmp_path):
    """Acceptance 4 of issue 19, in process: `adapt finetune ... > log.txt` (CliRunner's stdout is no terminal)."""
    result = CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv),
                                      "--max-steps", "4", "--batch-size", "8", "--output-dir", str(tmp_path / "run"),
                                      "train.log_steps=2", "tracking=[]"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("training ")]
    number, clock = r"\d+\.\d+", r"\d:\d\d:\d\d"
    assert len(lines) == 2 and "…" not in result.stdout, result.stdout
    for step, line in zip((2, 4), lines):  # the last lr is 0.00e+00: the linear schedule ends at zero
        assert re.fullmatch(rf"training {step}/4 steps  loss {number}  lr \d\.\d\de[-+]\d\d  {number} samples/s  "
                            rf"elapsed {clock}  ETA {clock}", line), line


# ---- literal overrides of text keys ---------------------------------------------------------------------
def test_the_issue_example_source_prefix_with_a_colon_reaches_the_task():
    from adapt.tasks import get_task

    # as a shell passes it (quotes removed), and with its quotes still on (a YAML-quoted value is unquoted)
    for override in ('task_options.source_prefix=summarize: ', 'task_options.source_prefix="summarize: "'):
        recipe = resolve_with_flags("summarize", {}, [override])
        assert recipe.task_options["source_prefix"] == "summarize: "
        assert get_task(recipe).options.source_prefix == "summarize: "


@pytest.mark.parametrize("override, value", [
    ("model=org/name: v2", "org/name: v2"),                  # a colon
    ("data.columns.text=[text]", "[text]"),                   # a leading [ (a column named so)
    ("data.columns.text={a}", "{a}"),
    ("description=  two spaces kept  ", "  two spaces kept  "),  # the text as typed
    ("description=it's \"ours\"", "it's \"ours\""),           # inner quotes
    ("description='it''s'", "it's"),                          # wholly YAML-quoted: unquoted
    ("data.train=2024.csv", "2024.csv"),
    ("tokenizer=1e3", "1e3"),
    ("data.validation=null", None),                           # an optional text key: null unsets it
    ("data.validation=~", None),
    ("data.validation=", None),
    ("data.validation=\"null\"", "null"),                     # quoted: the text null
    ("data.columns.text=null", "null"),                       # a str-only key: null is text
    ("description=", ""),
    ("task_options.source_prefix=translate English to German: ", "translate English to German: "),
    ("task_options.decoder=null", None),                      # str | None in Seq2SeqOptions
    ("task_options.src_lang=en_XX", "en_XX"),
    ("task_options.prompt_column=#q", "#q"),                  # str in the causal LM's Options
])
def test_text_keys_take_the_value_literally(override, value):
    assert parse_overrides([override]) == [(override.split("=", 1)[0], value)]


@pytest.mark.parametrize("override, value", [
    ("train.lr=3e-5", 3e-5), ("train.max_steps=null", None), ("train.compile=true", True),
    ("tracking=[mlflow, wandb]", ["mlflow", "wandb"]),       # list[str] is not text
    ("data.columns.references=[r2, r3]", ["r2", "r3"]),
    ("data.label_names=[neg, pos]", ["neg", "pos"]),          # list[str] | None
    ("peft.target_modules=[q, v]", ["q", "v"]),              # list[str] | str | None: YAML decides
    ("peft.options={use_rslora: true}", {"use_rslora": True}),
    ("task_options.num_beams=4", 4), ("task_options.max_new_tokens=null", None),
    ("task_options.metric_family=null", None),               # a Literal, not free text
    ("task_options.not_an_option=a: b", {"a": "b"}),          # declared by no task: YAML (the task refuses it)
])
def test_other_keys_are_still_parsed_as_yaml(override, value):
    assert parse_overrides([override]) == [(override.split("=", 1)[0], value)]


def test_a_literal_text_value_is_still_validated_by_the_schema():
    with pytest.raises(AdaptError) as err:
        resolve_with_flags("sentiment", {}, ["train.mixed_precision=fp8"])
    assert str(err.value).startswith("override train.mixed_precision=fp8: bad value for 'train.mixed_precision': ")
