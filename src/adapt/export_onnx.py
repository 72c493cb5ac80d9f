"""`adapt export --format onnx`: a trained run as an ONNX graph (PyTorch's `torch.onnx.export`, the dynamo/
torch.export exporter) with dynamic batch and sequence axes, checked against PyTorch with onnxruntime before the
folder is written; and `OnnxRuntimeModel`, which runs such a folder through adapt's own task code (featurize,
collate, postprocess), so its labels and spans can be compared with `adapt predict`.

Hugging Face Optimum (`optimum-onnx`) is the usual exporter for transformers models, but its current release
pins transformers < 4.58, and adapt runs on transformers 5; so the graph is exported by torch.onnx, in Optimum's
layout (input names `input_ids`, `attention_mask`, `token_type_ids`, `position_ids`,
`past_key_values.N.key/value`; outputs `logits` / `start_logits`, `end_logits`, `present.N.key/value`; folder
`model.onnx` + `config.json` + tokenizer files), so ORT and Optimum users can load it.

What is exported is the plain transformers model, loaded from the run's safetensors without adapt's speed layer
(no custom attention function: `plain_model`; no padding-free hooks: `check_plain`), LoRA adapters merged into
the weights, in float32.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from adapt.errors import AdaptError

# task name -> the names of the model outputs the graph returns, in transformers' ModelOutput field order
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "classification": ("logits",),
    "ner": ("logits",),
    "qa": ("start_logits", "end_logits"),
    "clm": ("logits",),
}
PARITY_TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| over every output, fp32
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEPENDENCIES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: the dynamo exporter's ONNX builder
PLAIN_ATTENTION = ("eager", "sdpa")
METADATA = "onnx_export.json"

# sample texts for tracing and the parity check: different lengths, so batches are padded
_TEXTS = ["a short one", "a somewhat longer sentence about a film that many people liked a lot",
          "Alice visited Paris in May", "the plot was thin but the acting carried it through to the end"]
_QUESTIONS = ["Who visited Paris?", "When did the visit happen?", "Where is the museum?"]
_CONTEXTS = ["Alice visited Paris in May and saw the Louvre.", "The visit happened in May of last year, in the rain.",
             "The museum is in the centre of the old town, near the river and the cathedral."]


def require_dependencies() -> None:
    """Check the export extra is installed, before anything is loaded or written.

    Raises:
        AdaptError: naming the missing packages and `pip install 'adapt[export]'`.
    """
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise AdaptError(f"ONNX export needs {', '.join(missing)} (not installed); run: pip install 'adapt[export]'")


@dataclass
class OnnxExport:
    """What `export_onnx` wrote: the folder, the graph's input and output names, whether decoding with past key
    values is exported, the parity check's largest |onnxruntime - PyTorch| difference, and notes."""

    path: str
    task: str
    inputs: list[str]
    outputs: list[str]
    past_key_values: bool
    max_abs_diff: float
    opset: int | None = None
    notes: list[str] = field(default_factory=list)


def plain_model(task, run_dir: str):
    """The run's model as plain transformers would load it, for export: no speed-layer patches (adapt's
    `speed.prepare_model` is never called here), LoRA/peft adapters merged, float32, eval mode, and an attention
    implementation among eager/sdpa (a config naming another, e.g. a kernel registered at run time, is reset to
    sdpa). `task` must have its tokenizer loaded.

    Raises:
        AdaptError: weights with NaN/inf (`check_finite_weights`), or a model carrying forward hooks.
    """
    from adapt.tasks.base import check_finite_weights

    model = task.load_trained(run_dir)
    check_finite_weights(model, run_dir)
    if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapter into the base weights
        model = model.merge_and_unload()
    task.restore_from_model(model)
    model = model.float().eval()
    if model.config._attn_implementation not in PLAIN_ATTENTION:
        model.set_attn_implementation("sdpa")
    check_plain(model, run_dir)
    return model


def check_plain(model, source: str) -> None:
    """Refuse a model with forward hooks (what adapt's padding-free speed layer installs, besides its attention
    function, which `plain_model` resets): the exported graph must compute what transformers computes.

    Raises:
        AdaptError: naming `source` and the module found.
    """
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            raise AdaptError(f"{source}: module '{name or 'model'}' carries forward hooks (a patched model); "
                             "export loads the plain model: this is a bug in adapt")


def sample_inputs(task, batch: int) -> dict:
    """Tokenized sample inputs (torch tensors, [batch, sequence], padded) for tracing and the parity check:
    question/context pairs for `qa`, texts otherwise. `batch` is at most 3 (qa) or 4."""
    tokenizer = task.tokenizer
    if task.name == "qa":
        encoded = tokenizer(_QUESTIONS[:batch], _CONTEXTS[:batch], padding=True, return_tensors="pt")
    else:
        encoded = tokenizer(_TEXTS[:batch], padding=True, return_tensors="pt")
    return {key: value for key, value in encoded.items() if key in ENCODER_INPUTS}


def position_ids_from_mask(attention_mask, width: int):
    """Positions of the last `width` tokens counted over real tokens only (left padding keeps position 0 for
    the first real token), as transformers' `generate` computes them; padded slots get 1."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    return positions[:, -width:]


def causal_lm_with_past(model, layers: int):
    """The torch.nn.Module the causal-LM graph is traced from: (input_ids, attention_mask, position_ids,
    past_key_values.0.key, past_key_values.0.value, ...) -> (logits, present.0.key, present.0.value, ...), each
    layer's tensors shaped [batch, kv_heads, past_sequence, head_dim] (transformers' DynamicCache, filled from
    the flat inputs and read back as flat outputs, as Optimum's decoder graphs take them)."""
    import torch
    from transformers import DynamicCache

    class CausalLMWithPast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            for layer in range(layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True)
            return (out.logits, *(t for layer in out.cache.layers for t in (layer.keys, layer.values)))

    return CausalLMWithPast()


def _past_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


def _prefill_cache(model, inputs: dict) -> list:
    """The flat [key, value, ...] cache tensors of a PyTorch forward over `inputs` (one per layer and kind)."""
    import torch

    with torch.inference_mode():
        positions = position_ids_from_mask(inputs["attention_mask"], inputs["input_ids"].shape[1])
        out = model(**inputs, position_ids=positions, use_cache=True)
    return [tensor.clone() for layer in out.cache.layers for tensor in (layer.keys, layer.values)]


def _export(module, args: tuple, kwargs: dict, dynamic_shapes, input_names: list[str], output_names: list[str],
            path: Path) -> int | None:
    """torch.onnx.export (dynamo) of `module` to `path`; returns the opset. Exporter chatter is silenced."""
    import contextlib
    import io

    import torch

    exporter_log = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed. Skipping ..."
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, kwargs=kwargs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        input_names=input_names, output_names=output_names, verbose=False)
            program.save(str(path))
    finally:
        exporter_log.setLevel(level)
    opset = [entry.version for entry in program.model_proto.opset_import if entry.domain in ("", "ai.onnx")]
    return opset[0] if opset else None


def _export_encoder(model, task, path: Path) -> tuple[list[str], list[str], int | None]:
    import torch

    trace = sample_inputs(task, 2)
    names = [name for name in ENCODER_INPUTS if name in trace]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    outputs = list(TASK_OUTPUTS[task.name])
    opset = _export(model, (), {name: trace[name] for name in names},
                    {name: {0: batch, 1: sequence} for name in names}, names, outputs, path)
    return names, outputs, opset


def _export_causal_lm(model, task, path: Path) -> tuple[list[str], list[str], int | None]:
    import torch

    layers = model.config.get_text_config().num_hidden_layers
    prompt = sample_inputs(task, 2)
    past = _prefill_cache(model, prompt)
    step = prompt["input_ids"][:, :3]
    mask = torch.cat([prompt["attention_mask"], torch.ones_like(step)], dim=1)
    names = ["input_ids", "attention_mask", "position_ids", *_past_names(layers, "past_key_values")]
    outputs = ["logits", *_past_names(layers, "present")]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past_sequence, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    shapes = ({0: batch, 1: sequence}, {0: batch, 1: total}, {0: batch, 1: sequence},
              tuple({0: batch, 2: past_sequence} for _ in past))
    module = causal_lm_with_past(model, layers)
    positions = position_ids_from_mask(mask, step.shape[1])
    opset = _export(module, (step, mask, positions, *past), {}, shapes, names, outputs, path)
    return names, outputs, opset


def _parity(session, model, task, past: bool) -> float:
    """Largest |onnxruntime - PyTorch| over every output on inputs of other shapes than the traced ones (3 rows,
    padded; for a causal LM with past key values: a prompt with an empty cache, then 2 new tokens on its cache)."""
    import numpy as np
    import torch

    inputs = sample_inputs(task, 3)
    if task.name != "clm":
        return output_difference(model, session, inputs)
    runner = OnnxRuntimeModel(session, past)
    if not past:
        positions = position_ids_from_mask(inputs["attention_mask"], inputs["input_ids"].shape[1])
        got = runner.run(inputs["input_ids"], inputs["attention_mask"], positions, None)
        with torch.inference_mode():
            out = model(**inputs, position_ids=positions, use_cache=False)
        return float(np.abs(got[0] - out.logits.numpy()).max())
    worst, mask, cache, reference = 0.0, None, None, None
    for ids in (inputs["input_ids"], inputs["input_ids"][:, -2:]):  # the prompt, then 2 new tokens on its cache
        new = inputs["attention_mask"] if mask is None else torch.ones_like(ids)
        mask = new if mask is None else torch.cat([mask, new], dim=1)
        positions = position_ids_from_mask(mask, ids.shape[1])
        got = runner.run(ids, mask, positions, cache)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=reference, use_cache=True)
        reference, cache = out.cache, got[1:]
        expected = [out.logits, *(t for layer in out.cache.layers for t in (layer.keys, layer.values))]
        worst = max(worst, *(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)))
    return worst


def output_difference(model, session, inputs: dict) -> float:
    """Largest |onnxruntime - PyTorch| over every output of an encoder graph (logits, or start/end logits) on one
    batch: `inputs` maps input names to [batch, sequence] torch tensors (it may hold more than the graph takes);
    `model` is the plain PyTorch model (`plain_model`), `session` an onnxruntime.InferenceSession."""
    import numpy as np
    import torch

    feed = {i.name: inputs[i.name].cpu().numpy() for i in session.get_inputs()}
    with torch.inference_mode():
        expected = model(**{name: torch.from_numpy(value) for name, value in feed.items()})
    got = session.run(None, feed)
    return max(float(np.abs(g - expected[o.name].float().numpy()).max()) for g, o in zip(got, session.get_outputs()))


def default_output(run_dir: str) -> Path:
    """Where `adapt export --format onnx` writes without --output: `<run folder>-onnx` beside the run."""
    folder = Path(run_dir).resolve()
    return folder.with_name(f"{folder.name}-onnx")


def export_onnx(run_dir: str, output_dir: str | None = None, overwrite: bool = False,
                trust_remote_code: bool = False) -> OnnxExport:
    """Export the run in `run_dir` (classification, ner, qa or clm; a LoRA run is merged first) to
    `output_dir/model.onnx` with dynamic `batch` and `sequence` axes (causal LMs: with past key values, Optimum's
    decoder layout; where the architecture's cache cannot be traced, without them, said in `notes`), plus
    config.json, generation_config.json (clm), the tokenizer, recipe.yaml (adapter-free) and onnx_export.json
    (names, opset, parity). Before the folder is swapped in, onnxruntime runs the graph on sample inputs of other
    shapes than the traced ones and every output must be within PARITY_TOLERANCE (1e-4, fp32) of PyTorch.

    Raises:
        AdaptError: missing export packages, a task without ONNX export (seq2seq), an `output_dir` that
            `runner.check_export_target` refuses, an unloadable run, or a parity check beyond the tolerance
            (nothing is written then).
    """
    import yaml

    from adapt import outputs
    from adapt.runner import check_export_target, trained_task

    require_dependencies()
    target = Path(output_dir) if output_dir else default_output(run_dir)
    task = trained_task(run_dir, trust_remote_code=trust_remote_code)
    if task.name not in TASK_OUTPUTS:
        raise AdaptError(f"{run_dir} is a {task.name} run; ONNX export covers {', '.join(TASK_OUTPUTS)} "
                         "(use the run folder itself, or `adapt export --merge` for LoRA runs)")
    check_export_target(Path(run_dir), target, overwrite)
    import onnxruntime
    import torch

    task.load_tokenizer(run_dir)
    model = plain_model(task, run_dir)
    notes: list[str] = []
    with outputs.AtomicDir(target) as tmp:
        graph = tmp / "model.onnx"
        past = task.name == "clm"
        try:
            if past:
                try:
                    names, output_names, opset = _export_causal_lm(model, task, graph)
                # an architecture whose cache the exporter cannot trace (torch.export failures reach us as its
                # TorchExportError) or convert; any other error is a bug and is reported below
                except torch.onnx.OnnxExporterError as err:
                    past = False
                    notes.append(f"exported without past key values ({type(err).__name__}: "
                                 f"{str(err).strip().splitlines()[0][:200]}); each step re-reads the whole sequence")
                    names, output_names, opset = _export_plain_causal_lm(model, task, graph)
            else:
                names, output_names, opset = _export_encoder(model, task, graph)
        except Exception as err:
            raise AdaptError(f"{run_dir}: torch.onnx could not export the {type(model).__name__} model "
                             f"({type(err).__name__}: {str(err).strip().splitlines()[0][:300]})") from None
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        diff = _parity(session, model, task, past)
        if not diff <= PARITY_TOLERANCE:
            raise AdaptError(f"{run_dir}: the ONNX graph differs from PyTorch by up to {diff:.3g} (limit "
                             f"{PARITY_TOLERANCE:g} in fp32); not written: report this model type "
                             f"({model.config.model_type}) as an export bug")
        model.config.save_pretrained(tmp)
        if task.name == "clm" and model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        task.tokenizer.save_pretrained(tmp)
        recipe = task.recipe.model_dump(mode="json")
        recipe["peft"] = None
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        result = OnnxExport(str(target), task.name, names, output_names, past, diff, opset, notes)
        (tmp / METADATA).write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_card(run_dir, result), encoding="utf-8")
    return result


def _export_plain_causal_lm(model, task, path: Path) -> tuple[list[str], list[str], int | None]:
    """A causal LM graph without a cache: (input_ids, attention_mask, position_ids) -> logits."""
    import torch

    trace = sample_inputs(task, 2)
    names = ["input_ids", "attention_mask", "position_ids"]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    positions = position_ids_from_mask(trace["attention_mask"], trace["input_ids"].shape[1])
    kwargs = {**{k: trace[k] for k in names[:2]}, "position_ids": positions, "use_cache": False}
    shapes = {name: {0: batch, 1: sequence} for name in names} | {"use_cache": None}
    return names, ["logits"], _export(model, (), kwargs, shapes, names, ["logits"], path)


def _card(run_dir: str, result: OnnxExport) -> str:
    return (f"---\nlibrary_name: onnx\ntags: [onnx, adapt]\n---\n# ONNX export of {Path(run_dir).name}\n\n"
            f"Task `{result.task}`, exported by `adapt export --format onnx` with torch.onnx (opset {result.opset}).\n"
            f"Inputs: {', '.join(result.inputs)}; outputs: {', '.join(result.outputs)}; dynamic axes: batch, "
            f"sequence{', past_sequence' if result.past_key_values else ''}.\n"
            f"onnxruntime vs PyTorch at export: max |diff| {result.max_abs_diff:.3g}.\n\n"
            "```python\nimport onnxruntime, transformers\n"
            "tokenizer = transformers.AutoTokenizer.from_pretrained(FOLDER)\n"
            "session = onnxruntime.InferenceSession(f'{FOLDER}/model.onnx')\n```\n")


class OnnxRuntimeModel:
    """An exported folder's graph run by onnxruntime behind the call interface adapt's tasks use on a
    transformers model: `model(input_ids=..., attention_mask=..., token_type_ids=...)` returns an output with
    `.logits` (or `.start_logits`/`.end_logits`) as CPU torch tensors, so `adapt.train.predict` and every task's
    eval_step/postprocess run on it unchanged. Causal LMs: `run` feeds the cache tensors directly.

    `source`: the folder (or model.onnx path), or an onnxruntime.InferenceSession."""

    training = False

    def __init__(self, source, past: bool | None = None):
        import onnxruntime

        if isinstance(source, (str, Path)):
            path = Path(source)
            path = path / "model.onnx" if path.is_dir() else path
            if not path.is_file():
                raise AdaptError(f"{source}: no model.onnx; give a folder written by `adapt export --format onnx`")
            source = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.session = source
        self.input_names = [i.name for i in source.get_inputs()]
        self.output_names = [o.name for o in source.get_outputs()]
        self.past_inputs = [i for i in source.get_inputs() if i.name.startswith("past_key_values.")]
        self.past = bool(self.past_inputs) if past is None else past

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def run(self, input_ids, attention_mask, position_ids, cache: list | None) -> list:
        """One causal-LM step: logits [batch, sequence, vocab] then the present cache arrays (numpy), given the
        previous step's present arrays as `cache` (None: an empty cache)."""
        import numpy as np

        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                "position_ids": position_ids.numpy()}
        if self.past:
            if cache is None:
                batch = input_ids.shape[0]
                cache = [np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.past_inputs]
            feed.update({i.name: value for i, value in zip(self.past_inputs, cache)})
        return self.session.run(None, feed)

    def __call__(self, **inputs) -> Any:
        import torch
        from transformers.modeling_outputs import ModelOutput

        if self.past:
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
            positions = inputs.get("position_ids")
            positions = position_ids_from_mask(mask, mask.shape[1]) if positions is None else positions
            got = self.run(inputs["input_ids"], mask, positions, None)
            return ModelOutput(logits=torch.from_numpy(got[0]))
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name in ("token_type_ids", "attention_mask", "position_ids"):
                ids = inputs["input_ids"]
                value = (torch.ones_like(ids) if name == "attention_mask" else torch.zeros_like(ids)
                         if name == "token_type_ids" else position_ids_from_mask(torch.ones_like(ids), ids.shape[1]))
            feed[name] = value.cpu().numpy()
        got = self.session.run(None, feed)
        return ModelOutput(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, got)})


def load_exported(folder: str):
    """(task, OnnxRuntimeModel) of a folder written by `export_onnx`: the task from its recipe.yaml with the
    tokenizer loaded and what `setup` learned (labels) restored from config.json.

    Raises:
        AdaptError: not an ONNX export folder, or missing export packages.
    """
    from transformers import AutoConfig

    from adapt.runner import trained_task

    require_dependencies()
    if not (Path(folder) / "model.onnx").is_file():
        raise AdaptError(f"{folder}: no model.onnx; give a folder written by `adapt export --format onnx`")
    task = trained_task(folder)
    task.load_tokenizer(folder)
    config = AutoConfig.from_pretrained(folder)

    task.restore_from_model(SimpleNamespace(config=config))  # restore_from_model reads only the config (labels)
    model = OnnxRuntimeModel(folder)
    model.config = config
    return task, model


def summary(result: OnnxExport) -> str:
    """The lines `adapt export --format onnx` prints: where, the graph's inputs/outputs and the parity figure."""
    lines = [f"ONNX model written to {result.path}/model.onnx (task {result.task}, opset {result.opset})",
             f"inputs: {', '.join(result.inputs)}",
             f"outputs: {', '.join(result.outputs)}",
             f"past key values: {'yes (decoding reuses the cache)' if result.past_key_values else 'no'}",
             f"parity (onnxruntime vs PyTorch, fp32, sample inputs): max |diff| {result.max_abs_diff:.3g} "
             f"(limit {PARITY_TOLERANCE:g})"]
    return "\n".join(lines + [f"note: {note}" for note in result.notes])
