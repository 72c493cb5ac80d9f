"""The `adapt eval` command: parse options and hand off to adapt.scoring (files) or a model evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapt.errors import AdaptError


def _model_report(model: str, data: Optional[str], recipe: Optional[str], overrides: list[str],
                  trust_remote_code: bool = False, modules: dict | None = None) -> dict:
    from adapt.runner import evaluate_model  # written with the task modules; imported only when used

    result = evaluate_model(model, data, recipe, overrides, trust_remote_code)
    # the scores go to the table and --json; the per-example rows only to --output
    report = {"scores": {"model": result["metrics"]}, "notes": [f"evaluated on {result['data']}"],
              "examples": result["predictions"]}
    if modules:
        from adapt.scoring import score_module_rows

        for ref, module in modules.items():  # evaluate modules on the same predictions
            name, scores = score_module_rows(module, ref, result["predictions"], f"{model} on {result['data']}",
                                             result.get("label_names"))
            report["scores"][name] = scores
    return report


def eval_command(
    settings: Annotated[Optional[list[str]], typer.Argument(help="Recipe overrides as key=value for --model, e.g. data.max_eval_examples=50 (same as --set).", show_default=False)] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="Metric to compute; repeat for several: accuracy, f1, precision, recall, matthews, seqeval, squad, squad_v2, bleu, chrf, rouge, perplexity; or an `evaluate` metric module: a local script/folder (./my_metric.py), or a Hub id when online.")] = None,
    predictions: Annotated[Optional[str], typer.Option("--predictions", "-p", help="Prediction file: one prediction per line, or .jsonl: a run's predictions_validation.jsonl (its 'prediction' field is read, never the gold 'label'/'tags'), `adapt predict` output (label / tags / generated_text), text, or id+prediction_text.")] = None,
    references: Annotated[Optional[list[str]], typer.Option("--references", "-r", help="Reference file aligned with the predictions; repeat for several references (BLEU/chrF streams, SQuAD gold answers).")] = None,
    ci: Annotated[Optional[float], typer.Option("--ci", help="Add a bootstrap confidence interval at this level, e.g. 0.95.")] = None,
    compare: Annotated[Optional[str], typer.Option("--compare", help="Second prediction file: paired bootstrap test (Koehn 2004) against --predictions, reports a p-value.")] = None,
    samples: Annotated[int, typer.Option("--bootstrap-samples", min=10, help="Number of bootstrap resamples for --ci and --compare.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the bootstrap resampling.")] = 0,
    tokenize: Annotated[Optional[str], typer.Option("--tokenize", help="BLEU: sacreBLEU tokenizer (13a, intl, char, none, zh, ja-mecab, ko-mecab, flores101, flores200). Default: from --target-lang, else zh/ja-mecab/ko-mecab when the references are Chinese/Japanese/Korean text, else 13a.")] = None,
    target_lang: Annotated[Optional[str], typer.Option("--target-lang", help="BLEU: language of the references (e.g. zh, ja, ko, de); picks sacreBLEU's tokenizer for it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON instead of a table.")] = False,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write scores and per-example predictions to this JSON file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Evaluate this saved model directory (an `adapt finetune` output) instead of prediction files.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Evaluation data file for --model (default: the recipe's evaluation split).")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Recipe name or YAML file describing the task for --model.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Recipe override KEY=VALUE for --model; repeatable.")] = None,
    text_file: Annotated[Optional[str], typer.Option("--text-file", help="Text whose perplexity --model is measured on (with --metric perplexity).")] = None,
    stride: Annotated[Optional[int], typer.Option("--stride", min=1, help="Perplexity: tokens between the starts of successive sliding windows (default: half of --max-length).")] = None,
    max_length: Annotated[int, typer.Option("--max-length", min=1, help="Perplexity: tokens the model reads per window.")] = 1024,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Perplexity: windows per forward pass.")] = 1,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="With --model: run model code shipped in the model folder (never enabled by the folder's own recipe.yaml).")] = False,
) -> None:
    """Score predictions against references (files) or a saved model, fully offline."""
    from adapt import scoring

    metrics = list(metric or [])
    overrides = [*(overrides or []), *(settings or [])]
    if output and not Path(output).resolve().parent.is_dir():  # found before any scoring or model loading
        raise AdaptError(f"--output {output}: the folder {Path(output).resolve().parent} does not exist; create it first")
    if overrides and model is None:
        raise AdaptError(f"recipe override '{overrides[0]}' applies only with --model DIR; drop it to score files")
    if (tokenize is not None or target_lang) and model is not None:
        raise AdaptError("--tokenize and --target-lang apply to BLEU of prediction files; with --model the "
                         "recipe's task_options.target_lang picks BLEU's tokenizer")
    if "perplexity" in metrics:
        if model is None or text_file is None or metrics != ["perplexity"]:
            raise AdaptError("perplexity needs --model DIR and --text-file FILE, and no other --metric")
        if overrides:
            raise AdaptError(f"recipe override '{overrides[0]}' does not apply to perplexity; use --max-length, "
                             "--stride and --batch-size")
        report = scoring.score_perplexity(model, text_file, max_length, stride or max(1, max_length // 2), batch_size,
                                          trust_remote_code)
    elif model is not None:
        builtin = [m for m in metrics if m in scoring.METRICS]
        if builtin:
            raise AdaptError(f"with --model the recipe's task picks the built-in metrics ('{builtin[0]}' is one); "
                             "--metric takes perplexity or an evaluate module (./my_metric.py) here")
        from adapt.metrics.evaluate_module import check_display_names

        check_display_names(metrics, {"model": "the model's own scores"})  # their scores share one report
        modules = {ref: scoring.load_metric_module(ref) for ref in metrics}  # before the model loads
        report = _model_report(model, data, recipe, list(overrides or []), trust_remote_code, modules)
    elif predictions is None:
        raise AdaptError("give --predictions FILE and --references FILE (or --model DIR)")
    else:
        report = scoring.score_files(
            metrics, predictions, list(references or []), ci, compare, samples, seed, tokenize, target_lang
        )
    if output:
        scoring.write_output(report, output)
    if as_json:
        typer.echo(scoring.to_json(report))
    else:
        scoring.render(report)
