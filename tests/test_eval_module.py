"""`adapt eval --metric ./my_metric.py`: local `evaluate` metric scripts (file or folder) through the real CLI,
offline, on prediction files and on a saved model; values cast to the module's features (strings, label ids, tag
lists, several references); bad modules and unreachable Hub ids are one line and exit code 2; built-in metric
names never reach `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapt.cli import app

HEADER = "import datasets\nimport evaluate\n\n\n"
EXACT = HEADER + '''class MyExact(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="exact match", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        return {"exact_match": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}
'''
LABEL_ACCURACY = HEADER + '''class LabelAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="accuracy of label ids", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("int32"),
                                                               "references": datasets.Value("int32")}))

    def _compute(self, predictions, references):
        assert all(isinstance(p, int) for p in predictions + references)
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(predictions),
                "predicted_ones": sum(predictions)}
'''
ANY_REFERENCE = HEADER + '''class AnyReference(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="prediction equals one of the references", citation="",
                                   inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        return {"hit": sum(p in refs for p, refs in zip(predictions, references)) / len(predictions)}
'''
TOKEN_ACCURACY = HEADER + '''class TokenAccuracy(evaluate.Metric):
    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(description="tag accuracy", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": tags, "references": tags}))

    def _compute(self, predictions, references):
        pairs = [(p, r) for ps, rs in zip(predictions, references) for p, r in zip(ps, rs)]
        return {"token_accuracy": sum(p == r for p, r in pairs) / len(pairs)}
'''


@pytest.fixture(autouse=True)
def offline_evaluate(tmp_path, monkeypatch):
    """No network, and evaluate's caches (modules, metric data, downloads) in this test's tmp folder. evaluate imports a script as a
    submodule of the package `evaluate_modules` in the first cache folder on sys.path, once per process: each
    test starts with that package unimported and its own folder first."""
    import sys

    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, folder in (("HF_MODULES_CACHE", "hf_modules"), ("HF_METRICS_CACHE", "hf_metrics"),
                         ("HF_EVALUATE_CACHE", "hf_evaluate"), ("DOWNLOADED_EVALUATE_PATH", "hf_downloads")):
        monkeypatch.setattr(evaluate.config, name, tmp_path / folder)
    for name in [n for n in sys.modules if n.split(".")[0] == "evaluate_modules"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "hf_modules"))
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.chdir(tmp_path)


def cli(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def write(path: Path, lines) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return str(path)


def scores(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["scores"]


def test_local_script_on_files_exact_value(tmp_path):
    (tmp_path / "my_metric.py").write_text(EXACT)
    p = write(tmp_path / "p.txt", ["the cat", "a dog", "two birds", "fish"])
    r = write(tmp_path / "r.txt", ["the cat", "a dog", "three birds", "fish"])
    result = cli("--metric", "./my_metric.py", "-p", p, "-r", r, "--json", "--output", str(tmp_path / "o.json"))
    assert scores(result) == {"my_metric": {"exact_match": 0.75}}  # 3 of 4 equal
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["examples"][2] == {"id": "3", "prediction": "two birds", "references": ["three birds"]}
    # evaluate imported the script from its modules cache, which lies in this test's folder
    assert list((tmp_path / "hf_modules").rglob("my_metric.py")) and (tmp_path / "hf_metrics").is_dir()


def test_folder_and_table_output(tmp_path):
    (tmp_path / "exact").mkdir()
    (tmp_path / "exact" / "exact.py").write_text(EXACT)
    p = write(tmp_path / "p.jsonl", [{"prediction": "yes"}, {"prediction": "no"}])
    r = write(tmp_path / "r.jsonl", [{"text": "x", "target": "yes"}, {"target": "yes"}])
    assert scores(cli("-m", "exact", "-p", p, "-r", r, "--json")) == {"exact": {"exact_match": 0.5}}
    table = cli("-m", str(tmp_path / "exact"), "-p", p, "-r", r)
    assert table.exit_code == 0 and "exact_match" in table.output and "0.5000" in table.output


def test_label_ids_several_references_and_tag_lists(tmp_path):
    (tmp_path / "label_accuracy.py").write_text(LABEL_ACCURACY)
    ids = cli("-m", "./label_accuracy.py", "-p", write(tmp_path / "p.txt", ["1", "0", "1", "1.0", "0"]),
              "-r", write(tmp_path / "r.txt", ["1", "1", "1", "0", "0"]), "--json")
    assert scores(ids) == {"label_accuracy": {"accuracy": 0.6, "predicted_ones": 3}}  # 1,3,5 right; 1.0 is 1
    names = cli("-m", "./label_accuracy.py", "-p", write(tmp_path / "n.txt", ["positive"]),
                "-r", write(tmp_path / "rn.txt", ["negative"]))
    assert names.exit_code == 2
    assert "n.txt line 1: 'positive' is not a label id; the metric's features take integers (int32)" in names.output

    (tmp_path / "any_reference.py").write_text(ANY_REFERENCE)
    multi = cli("-m", "./any_reference.py", "-p", write(tmp_path / "h.txt", ["a cat", "a dog", "an owl"]),
                "-r", write(tmp_path / "r1.txt", ["the cat", "a dog", "owl"]),
                "-r", write(tmp_path / "r2.txt", ["a cat", "the dog", "an eagle"]), "--json")
    assert scores(multi) == {"any_reference": {"hit": pytest.approx(2 / 3)}}

    (tmp_path / "token_accuracy.py").write_text(TOKEN_ACCURACY)
    tags = cli("-m", "./token_accuracy.py", "-p", write(tmp_path / "tp.txt", ["B-PER O O", "B-LOC"]),
               "-r", write(tmp_path / "tr.txt", ["B-PER O B-LOC", "B-LOC"]), "--json")
    assert scores(tags) == {"token_accuracy": {"token_accuracy": 0.75}}  # 3 of 4 tags


def test_on_a_saved_model_the_module_agrees_with_the_builtin_accuracy(tiny_run, tmp_path):
    """Classification: label ids in the model's id2label order for an int32 module, names for a string one."""
    run, _ = tiny_run
    (tmp_path / "label_accuracy.py").write_text(LABEL_ACCURACY)
    (tmp_path / "my_exact.py").write_text(EXACT)
    data = run / "predictions_validation.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    gold = tmp_path / "gold.jsonl"
    write(gold, [{"text": r["text"], "label": r["label"]} for r in rows])
    result = scores(cli("--model", str(run), "--data", str(gold), "-m", "./label_accuracy.py", "-m", "./my_exact.py",
                        "--json"))
    accuracy = result["model"]["accuracy"]
    assert result["label_accuracy"]["accuracy"] == pytest.approx(accuracy)
    assert result["my_exact"]["exact_match"] == pytest.approx(accuracy)
    assert result["label_accuracy"]["predicted_ones"] == sum(r["prediction"] == "positive" for r in rows)
    assert cli("--model", str(run), "-m", "accuracy").exit_code == 2  # built-in names: the task picks them


@pytest.mark.parametrize("source,message", [
    ("import evaluate\nclass Broken(evaluate.Metric)\n    pass\n", r"broken\.py line 2: syntax error"),
    (HEADER + "class NoCompute(evaluate.Metric):\n    def _info(self):\n        return evaluate.MetricInfo("
     "description='', citation='', features=datasets.Features({'predictions': datasets.Value('string'), "
     "'references': datasets.Value('string')}))\n", r"NoCompute defines no _compute\(\)"),
    ("x = 1\n", r"evaluate could not load it \(.*\); a metric script defines one subclass of evaluate\.Metric"),
    (EXACT.replace("sum(p == r", "1 / 0 + sum(p == r"), r"computing it failed \(ZeroDivisionError: division by zero\)"),
])
def test_bad_modules_are_one_line(tmp_path, source, message):
    (tmp_path / "broken.py").write_text(source)
    p = write(tmp_path / "p.txt", ["a"])
    result = cli("-m", "./broken.py", "-p", p, "-r", p)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    import re

    assert re.search(message, result.output), result.output


def test_missing_file_hub_id_offline_and_ci(tmp_path):
    p = write(tmp_path / "p.txt", ["a"])
    result = cli("-m", "./nope.py", "-p", p, "-r", p)
    assert result.exit_code == 2 and "--metric ./nope.py: no such file or folder" in result.output
    result = cli("-m", "someone/fancy_metric", "-p", p, "-r", p)
    assert result.exit_code == 2
    assert ("unknown metric 'someone/fancy_metric': not a built-in metric (accuracy, f1" in result.output
            and "Hub is not reachable (offline)" in result.output)
    (tmp_path / "my_exact.py").write_text(EXACT)
    result = cli("-m", "./my_exact.py", "-p", p, "-r", p, "--ci", "0.9")
    assert result.exit_code == 2 and "--ci and --compare apply to built-in metrics only" in result.output


def test_builtin_names_never_reach_evaluate(tmp_path, monkeypatch):
    import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate.load called for a built-in metric")

    monkeypatch.setattr(evaluate, "load", refuse)
    p = write(tmp_path / "p.txt", ["pos", "neg", "pos"])
    r = write(tmp_path / "r.txt", ["pos", "pos", "pos"])
    assert scores(cli("-m", "accuracy", "-p", p, "-r", r, "--json"))["accuracy"]["accuracy"] == pytest.approx(2 / 3)


TRUTH = HEADER + '''class Truth(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="agreement of truth values", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("bool"),
                                                               "references": datasets.Value("bool")}))

    def _compute(self, predictions, references):
        assert all(type(v) is bool for v in predictions + references), (predictions, references)
        return {"agreement": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}
'''


def test_bool_features_get_true_and_false(tmp_path):
    from datasets import Value

    from adapt.errors import AdaptError
    from adapt.metrics.evaluate_module import cast

    cast_values = [cast(v, Value("bool"), "x") for v in (True, 0, "1", " true", "False", 1.0)]
    assert cast_values == [True, False, True, True, False, True] and all(type(v) is bool for v in cast_values)
    with pytest.raises(AdaptError, match=r"^x: 2 is not a truth value; the metric's features take bool"):
        cast(2, Value("bool"), "x")
    (tmp_path / "truth.py").write_text(TRUTH)
    p = write(tmp_path / "p.txt", ["true", "0", "1"])
    r = write(tmp_path / "r.txt", ["1", "false", "false"])
    assert scores(cli("-m", "./truth.py", "-p", p, "-r", r, "--json")) == {"truth": {"agreement": 2 / 3}}


def test_clm_perplexity_rows_are_not_predictions_for_a_module(tmp_path):
    """A clm run's predictions file holds the input text with its nll/perplexity: its 'text' is no prediction."""
    (tmp_path / "my_metric.py").write_text(EXACT)
    p = write(tmp_path / "predictions_validation.jsonl", [{"text": "the cat sat", "nll": 2.5, "perplexity": 12.2}])
    r = write(tmp_path / "r.txt", ["the cat sat"])
    result = cli("-m", "./my_metric.py", "-p", p, "-r", r, "--json")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr == (f"error: {p} line 1: the row holds per-example perplexity (nll, perplexity), not a "
                             "prediction; the row has: text, nll, perplexity; evaluate metrics read one value per "
                             "line, or .jsonl with a model-output field (prediction, prediction_text, "
                             "generated_text, label, tags, text; references: label, tags, answers, references, "
                             "completion, target, text)\n")


def test_metrics_reported_under_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "exact.py").write_text(EXACT)
    (tmp_path / "accuracy.py").write_text(EXACT)
    (tmp_path / "model.py").write_text(EXACT)
    p = write(tmp_path / "p.txt", ["x"])
    result = cli("-m", "./a/exact.py", "-m", "./b/exact.py", "-p", p, "-r", p, "--json")
    assert result.exit_code == 2 and result.stderr == (
        "error: --metric ./b/exact.py: its scores would be reported under 'exact', which already holds the scores of "
        "--metric ./a/exact.py; rename the metric script (its file name names its scores)\n")
    result = cli("-m", "accuracy", "-m", "./accuracy.py", "-p", p, "-r", p, "--json")
    assert result.exit_code == 2 and "which already holds the scores of the built-in --metric accuracy" in result.stderr
    result = cli("--model", str(tmp_path / "no_run"), "-m", "./model.py", "--json")  # refused before any loading
    assert result.exit_code == 2 and "reported under 'model', which already holds the model's own scores" in result.stderr
    assert scores(cli("-m", "./a/exact.py", "-m", "./a/exact.py", "-p", p, "-r", p, "--json")) == {
        "exact": {"exact_match": 1.0}}  # the same script twice is one metric
