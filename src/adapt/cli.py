"""The `adapt` command line: parses options, turns them into recipe overrides, and dispatches. No logic
lives here beyond that."""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated, Optional

import typer

from adapt.speed import runtime
from adapt.errors import AdaptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune and adapt pretrained Hugging Face transformers to real tasks.")
recipes_app = typer.Typer(help="List the named recipes, or show one resolved.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


def user_errors(command):
    """Bad input is one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AdaptError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def finetune(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (see `adapt recipes`) or path to a YAML recipe.")] = "sentiment",
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Recipe overrides as key=value, e.g. train.warmup_ratio=0.1 data.columns.text=sentence.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="Model: Hub id, local folder, or embedded:NAME.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Training data: CSV/TSV/JSON/JSONL/Parquet file, Hub dataset id, or embedded:NAME.")] = None,
    validation: Annotated[Optional[str], typer.Option(help="Validation data; without it a seeded share of train is held out.")] = None,
    test: Annotated[Optional[str], typer.Option(help="Test data, scored once with the best checkpoint.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the training data.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, linear warmup then decay).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per micro-batch per process.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches accumulated per optimizer step.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps (overrides --epochs).")] = None,
    max_train_examples: Annotated[Optional[int], typer.Option(help="Use at most this many training examples (seeded sample).")] = None,
    eval_steps: Annotated[Optional[int], typer.Option(help="Evaluate every N optimizer steps (always at the end).")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Write a resumable checkpoint every N steps (and at the end).")] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Where the run is written (default runs/<recipe>).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, initialisation and dropout.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly where the run in --output-dir stopped (its last complete checkpoint).")] = False,
    resume_from: Annotated[Optional[str], typer.Option(help="Continue from this checkpoint folder (e.g. runs/x/checkpoints/step-200).")] = None,
    num_processes: Annotated[int, typer.Option(help="Train on N processes (relaunches itself with `accelerate launch`).")] = 1,
    push_to_hub: Annotated[Optional[str], typer.Option("--push-to-hub", help="Upload the finished run folder (weights, tokenizer, model card) to this Hugging Face Hub repository, e.g. USER/NAME; checked before training.")] = None,
) -> None:
    """Fine-tune a pretrained model with a recipe."""
    from adapt.recipe import resolve_with_flags

    flags = {"model": model, "data": data, "validation": validation, "test": test, "epochs": epochs, "lr": lr,
             "batch_size": batch_size, "grad_accum": grad_accum, "max_steps": max_steps,
             "max_train_examples": max_train_examples, "eval_steps": eval_steps, "save_steps": save_steps,
             "output_dir": output_dir, "seed": seed}
    resolved = resolve_with_flags(recipe, flags, overrides)
    from adapt.preflight import check_recipe

    check_recipe(resolved)  # before any data is read; the loop repeats it with the model checks (preflight.check_run)
    target = None
    if push_to_hub:  # the Hub is checked (reachable, logged in) before any training, not after it
        from adapt.hub import check_push_target

        target = check_push_target(push_to_hub)
    if num_processes > 1:
        from adapt.launch import relaunch

        raise typer.Exit(relaunch(num_processes))
    from adapt.train import Interrupted, finetune as run

    try:
        run(resolved, overwrite=overwrite, resume=resume_from or resume)
    except Interrupted as stop:
        print(str(stop), file=sys.stderr)
        raise typer.Exit(130) from None
    if target is not None:
        from pathlib import Path

        from adapt.hub import push_run

        url = push_run(target, Path(resolved.output_dir))
        if url:
            print(f"uploaded {resolved.output_dir} to {url}", file=sys.stderr)


@app.command()
@user_errors
def predict(
    model: Annotated[str, typer.Option(help="A model folder written by `adapt finetune`.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Inputs to predict on; none = read --file or stdin, one per line.", show_default=False)] = None,
    file: Annotated[Optional[str], typer.Option(help="Read inputs from this file, one per line (streamed).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="jsonl (one JSON object per input) or table.")] = "jsonl",
    batch_size: Annotated[int, typer.Option(min=1, help="Inputs per forward pass.")] = 64,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Task option override key=value (e.g. task_options.max_new_tokens=64).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Generation tasks: tokens to generate.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Generation tasks: sampling temperature (0 = greedy).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Generation tasks: nucleus sampling mass.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run model code shipped in the model folder (never enabled by the folder's own recipe.yaml).")] = False,
) -> None:
    """Run a fine-tuned model on new inputs: labels, entities, answers or generated text."""
    from pathlib import Path

    from adapt import data
    from adapt.runner import finite_records, json_value, load_trained, predict_stream
    from adapt.ui import console, prediction_table

    if output_format not in ("jsonl", "table"):
        raise AdaptError(f"--format must be jsonl or table, not '{output_format}'")
    if file and not texts and not Path(file).is_file():  # found before the model loads
        raise AdaptError(f"--file {file}: {'is a directory' if Path(file).is_dir() else 'no such file'}; "
                         "give a text file with one input per line")
    if file and not texts:
        for _ in data.text_lines(Path(file)):  # the whole file decodes (UTF-8, intact compression) before the model loads
            pass
    sets = list(overrides or [])
    for key, value in (("max_new_tokens", max_new_tokens), ("temperature", temperature), ("top_p", top_p)):
        if value is not None:
            sets.append(f"task_options.{key}={value}")
    task, loaded = load_trained(model, None, sets, trust_remote_code)
    if texts:
        inputs = iter(texts)
    else:
        lines = data.text_lines(Path(file)) if file else data.decoded_lines(sys.stdin.buffer, "stdin")
        inputs = (line for _, line in lines if line.strip())
    records = finite_records(predict_stream(task, loaded, inputs, batch_size), model)
    if output_format == "table":
        console.print(prediction_table(list(records)))
    elif output_format == "jsonl":
        for record in records:
            sys.stdout.write(json.dumps(record, ensure_ascii=False, default=json_value, allow_nan=False) + "\n")


@app.command()
@user_errors
def export(
    run: Annotated[Optional[str], typer.Argument(help="The run folder to export (same as --model).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="A run folder written by `adapt finetune` (a LoRA/peft run for --merge).")] = None,
    output: Annotated[Optional[str], typer.Option(help="Folder for the exported checkpoint (--format onnx: default <run>-onnx beside the run).")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Fold the adapter into the base weights (a plain transformers checkpoint).")] = False,
    export_format: Annotated[Optional[str], typer.Option("--format", help="onnx: model.onnx (dynamic batch/sequence axes) + config + tokenizer, checked against PyTorch with onnxruntime.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")] = False,
) -> None:
    """Export a fine-tuned run: --merge (a LoRA adapter folded into a plain checkpoint) or --format onnx."""
    if run and model and run != model:
        raise AdaptError(f"two run folders given ({run} and --model {model}); give one")
    folder = run or model
    if not folder:
        raise AdaptError("give the run folder to export: adapt export RUN_DIR (or --model RUN_DIR)")
    if export_format is not None:
        if export_format != "onnx":
            raise AdaptError(f"--format must be onnx, not '{export_format}' (--merge writes a safetensors checkpoint)")
        if merge:
            raise AdaptError("--merge and --format onnx exclude each other; ONNX export merges a LoRA adapter itself")
        from adapt.export_onnx import export_onnx, summary

        print(summary(export_onnx(folder, output, overwrite)))
        return
    if not merge:
        raise AdaptError("pass --merge (fold a LoRA adapter into a plain checkpoint) or --format onnx")
    if output is None:
        raise AdaptError("--merge needs --output DIR, the folder for the merged checkpoint")
    from adapt.runner import merge_adapter

    print(f"merged checkpoint written to {merge_adapter(folder, output, overwrite)}")


@app.command()
@user_errors
def serve(
    model: Annotated[str, typer.Option(help="A model folder written by `adapt finetune` (or a Hugging Face folder with --recipe).")],
    host: Annotated[str, typer.Option(help="Address to listen on; the default is reachable from this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe naming the task of a folder without recipe.yaml (e.g. clm-instruct for embedded SmolLM2).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Task option override key=value (e.g. task_options.max_new_tokens=64), as in `adapt predict`.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name clients send in the OpenAI `model` field (default: the folder's name).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Inputs per forward pass, as in `adapt predict`; concurrent /predict requests are merged up to it.")] = 64,
    max_inputs: Annotated[int, typer.Option(min=1, help="Inputs (or prompts) one request may send.")] = 64,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body, in bytes.")] = 1_000_000,
    max_tokens: Annotated[int, typer.Option(min=1, help="Largest max_tokens a generation request may ask for.")] = 1024,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run model code shipped in the model folder.")] = False,
) -> None:
    """Serve a fine-tuned model over HTTP: /predict, and OpenAI-compatible /v1 endpoints for language models."""
    from adapt.serve import Limits, serve as run

    limits = Limits(max_body_bytes=max_body_bytes, max_inputs=max_inputs, max_new_tokens=max_tokens, max_batch=batch_size)
    run(model, host, port, recipe, list(overrides or []), name, trust_remote_code, limits, batch_size)


@recipes_app.callback()
@user_errors
def recipes(ctx: typer.Context) -> None:
    """List the named recipes."""
    if ctx.invoked_subcommand:
        return
    from adapt.recipe import available_recipes, load_recipe_dict
    from adapt.ui import recipes_listing

    rows = []
    for name in available_recipes():
        raw, _ = load_recipe_dict(name)
        rows.append((name, raw.get("task", ""), raw.get("model", ""), str(raw.get("data", {}).get("train", "")),
                     raw.get("description", "")))
    print(recipes_listing(rows))


@recipes_app.command("show")
@user_errors
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides to apply before showing.", show_default=False)] = None,
) -> None:
    """Print a recipe fully resolved (defaults filled in, overrides applied) as YAML."""
    from adapt.recipe import parse_overrides, recipe_to_yaml, resolve_recipe

    print(recipe_to_yaml(resolve_recipe(name, parse_overrides(list(overrides or [])))), end="")


from adapt.cli_eval import eval_command  # noqa: E402  (registered after the app exists)

app.command("eval")(user_errors(eval_command))

from adapt.cli_extra import data_inspect_command, estimate_command, runs_command  # noqa: E402

data_app = typer.Typer(help="Look at a recipe's data before training.")
app.add_typer(data_app, name="data")
data_app.command("inspect")(user_errors(data_inspect_command))
app.command("estimate")(user_errors(estimate_command))
app.command("runs")(user_errors(runs_command))


def main() -> None:
    runtime.start()
    try:
        app()
    finally:
        runtime.finish()
