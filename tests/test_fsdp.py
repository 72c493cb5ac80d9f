"""FSDP2 through Accelerate, for real: 2 CPU processes (gloo) launched with the shipped
examples/accelerate/fsdp.yaml (only `use_cpu: true`, 2 processes and a free port changed). A run killed after a
checkpoint and resumed ends bitwise equal to an uninterrupted one, in both checkpoint forms (sharded, full);
`cpu_ram_efficient_loading` (the model on `meta` on all but the first process) trains the same weights as
loading everywhere; the final folder loads in a plain transformers pipeline; a resume with another sharding
is refused with one line; LoRA trains under FSDP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from distributed_helpers import (assert_bitwise_equal, cpu_config, kill_job, launch, run, start,
                                 wait_for_checkpoint, weights)

STEPS = 6


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # no dropout and one thread per process: the resumed run can only differ by what the checkpoint lost
    return ["finetune", "--model", str(model), "--data", str(data), "--max-steps", str(STEPS), "--batch-size", "4",
            "--save-steps", "2", "--eval-steps", "3", "--seed", "5", "--output-dir", str(out), "tracking=[]",
            "train.lr=1e-3", *extra]


@pytest.fixture(scope="module")
def setup(tiny_bert_builder, tmp_path_factory):
    """(model, data, cache, root) shared by the module's runs."""
    from conftest import sentiment_rows, write_table

    root = tmp_path_factory.mktemp("fsdp")
    model = tiny_bert_builder(root / "model", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write_table(root / "sentiment.csv", sentiment_rows())
    return model, data, root / "cache", root


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run with the shipped settings (sharded state dict, meta-device loading, bf16)."""
    model, data, cache, root = setup
    out = root / "reference"
    run(launch(cpu_config("fsdp", root), *_args(model, data, out)), cache)
    return out


def test_the_shipped_settings_train_and_the_folder_loads_without_adapt(reference):
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["mixed_precision"] == "bf16" and metrics["train_steps"] == STEPS
    assert metrics["validation"]["examples"] == 4  # 10% of 40, each scored once
    # the sharded checkpoint: one shard file per process, no gathered copy
    step = reference / "checkpoints" / f"step-{STEPS}"
    assert sorted(p.name for p in step.glob("shard-*")) == [
        "shard-0-of-2.json", "shard-0-of-2.safetensors", "shard-1-of-2.json", "shard-1-of-2.safetensors"]
    assert json.loads((step / "run.json").read_text())["sharding"] == "FSDP2 SHARDED_STATE_DICT"

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(reference), device="cpu")
    assert json.loads((reference / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    assert classify("a wonderful film")[0]["label"] in ("positive", "negative")


@pytest.mark.parametrize("kind, efficient_loading", [("SHARDED_STATE_DICT", True), ("FULL_STATE_DICT", False)])
def test_killed_after_a_checkpoint_then_resumed_equals_the_uninterrupted_run(setup, reference, kind, efficient_loading):
    """SIGKILL to the launcher and both workers once step 2 is saved; `--resume` ends bitwise equal to the
    reference. The FULL_STATE_DICT run also loads the model on every process (no meta device): the same
    weights, so meta-device loading with rank 0's broadcast changes nothing."""
    model, data, cache, root = setup
    out = root / f"killed-{kind}"
    config = cpu_config("fsdp", root, fsdp_config={"fsdp_state_dict_type": kind,
                                                   "fsdp_cpu_ram_efficient_loading": efficient_loading})
    job = start(launch(config, *_args(model, data, out)), cache)
    wait_for_checkpoint(job, out / "checkpoints", 2)
    kill_job(job)
    assert not (out / "metrics.json").exists(), "the run finished before it was killed"

    if kind == "FULL_STATE_DICT":  # the checkpoint holds the gathered state, and another sharding is refused
        assert (out / "checkpoints" / "step-2" / "fsdp-full.safetensors").exists()
        other = cpu_config("fsdp", root)
        refused = run(launch(other, *_args(model, data, out), "--resume"), cache, ok=False)
        assert refused.returncode != 0
        assert "sharding: FSDP2 FULL_STATE_DICT -> FSDP2 SHARDED_STATE_DICT" in refused.stderr
        assert "error: --resume:" in refused.stderr and "adapt/train.py" not in refused.stderr  # one line, no traceback

    resumed = run(launch(config, *_args(model, data, out), "--resume"), cache)
    assert "resuming from" in resumed.stderr
    assert_bitwise_equal(weights(reference), weights(out))
    ref_metrics, metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
    assert metrics["validation"] == ref_metrics["validation"]
    assert metrics["train_samples"] == ref_metrics["train_samples"]


def test_lora_under_fsdp_saves_the_trained_adapter(setup):
    """The adapter folder holds the trained LoRA weights: each equals its two shards in the last checkpoint
    put together (FSDP2 shards along dim 0), and LoRA's B matrices (zero at the start) have moved."""
    import torch
    from safetensors.torch import load_file

    model, data, cache, root = setup
    out = root / "lora"
    run(launch(cpu_config("fsdp", root), *_args(model, data, out), "--max-steps", "2", "peft.method=lora",
               "peft.r=4"), cache)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    shards = [load_file(str(out / "checkpoints" / "step-2" / f"shard-{r}-of-2.safetensors")) for r in (0, 1)]
    lora = {k: v for k, v in adapter.items() if "lora_" in k}
    assert lora and all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    for name, value in lora.items():
        key = "weight/" + re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", name)  # peft's adapter name
        assert torch.equal(torch.cat([shard[key] for shard in shards]), value), name


def test_bf16_master_weights_under_fsdp_are_refused_before_the_data_is_read(setup):
    """The refusal needs only the recipe and the launcher's config: it comes before the data is read and
    tokenized (nothing in the feature cache) and before the model is built, with one line and nothing written."""
    model, data, _, root = setup
    out, cache = root / "bf16-master", root / "cache-bf16-master"
    refused = run(launch(cpu_config("fsdp", root), *_args(model, data, out), "train.mixed_precision=bf16-master"),
                  cache, ok=False)
    assert refused.returncode != 0
    assert ("error: train.mixed_precision: bf16-master is the speed layer's own master-weight mode and does not apply "
            "to sharded (FSDP/DeepSpeed) runs") in refused.stderr
    assert "adapt/train.py" not in refused.stderr  # one line, no traceback
    assert not out.exists() and not cache.exists()


# ---- DeepSpeed, and the GPU check's sharded runs --------------------------------------------------------
@pytest.mark.parametrize("flag", ["true", "1"])  # Accelerate reads either as on (parse_flag_from_env)
def test_deepspeed_on_a_machine_without_gpus_is_refused_before_anything_is_written(tiny_bert, sentiment_csv,
                                                                                   tmp_path, monkeypatch, flag):
    import torch

    from adapt.errors import AdaptError
    from conftest import run_tiny_finetune

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA GPUs: DeepSpeed runs there")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", flag)  # what `accelerate launch` sets for deepspeed_zero2.yaml
    with pytest.raises(AdaptError) as caught:
        run_tiny_finetune(tiny_bert, sentiment_csv, tmp_path / "run", tmp_path / "cache")
    assert str(caught.value) == ("the Accelerate config asks for DeepSpeed, which adapt runs on CUDA GPUs only and this "
                                 "machine has none; on CPUs shard with FSDP2 instead (examples/accelerate/fsdp.yaml "
                                 "with use_cpu: true)")
    assert not (tmp_path / "run").exists()


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.skipif(_gpus() == 0, reason="DeepSpeed ZeRO-2 needs CUDA GPUs; its CPU backend did not complete a "
                                         "2-process ZeRO-2 step on this machine (README: DeepSpeed)")
def test_deepspeed_zero2_trains_and_saves_a_full_model(setup):
    model, data, cache, root = setup
    out = root / "zero2"
    config = cpu_config("deepspeed_zero2", root, use_cpu=False, num_processes=_gpus())
    run(launch(config, *_args(model, data, out)), cache)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == _gpus() and metrics["validation"]["examples"] == 4
    from transformers import pipeline

    assert pipeline("text-classification", model=str(out))("a wonderful film")[0]["label"] in ("positive", "negative")


def test_the_gpu_checks_sharded_command_lines_parse(tmp_path, capsys):
    """benchmarks/sharded_check.py --dry: each command line is one `accelerate launch` accepts (its config file
    loads) and one `adapt finetune` parses, without running either."""
    import sys

    import typer
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import sharded_check

    from adapt.cli import app

    assert sharded_check.main(["--out", str(tmp_path / "sharded.json"), "--dry"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    group = typer.main.get_command(app)
    for line in lines:
        launched = launch_command_parser().parse_args(line[3:])
        assert launched.module and launched.training_script == "adapt"
        kind = load_config_from_file(launched.config_file).distributed_type
        assert kind in ("FSDP", "DEEPSPEED")
        args = launched.training_script_args
        with group.make_context("adapt", list(args), resilient_parsing=False) as context:
            command = group.get_command(context, args[0])
            parsed = command.make_context(args[0], list(args[1:]), parent=context).params
        assert parsed["recipe"] == "sentiment" and parsed["max_steps"] == 200 and parsed["overrides"] == [
            "data.columns.text=sentence", "tracking=[]"]


# ---- the pieces, in one process ---------------------------------------------------------------------------
def test_materialize_gives_meta_tensors_storage_keeps_ties_and_loaded_buffers():
    """cpu_ram_efficient_loading builds the model on `meta` on all but the first process; Accelerate maps the
    optimizer's parameters by data_ptr (0 for every meta tensor), so each needs its own storage, tied ones one."""
    import torch

    from adapt import fsdp

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied, as an LM head
    model.register_buffer("positions", torch.arange(4))  # transformers fills non-persistent buffers on the CPU
    fsdp.materialize(model, torch.device("cpu"))
    params = list(model.parameters())
    assert len(params) == 1 and not params[0].is_meta and model[1].weight is model[0].weight
    assert params[0].data_ptr() != 0 and params[0].requires_grad
    assert torch.equal(model.positions, torch.arange(4))


def test_bert_embeddings_are_not_wrapped_twice_by_the_transformer_policy(tiny_bert):
    """BERT's _no_split_modules names BertEmbeddings, which holds the input embedding Accelerate shards on its
    own: the layers are wrapped, the embeddings module is left to the root unit."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoModelForSequenceClassification

    from adapt import fsdp

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    fsdp.choose_layers(model, SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    assert plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    chosen = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["BertEmbeddings", "BertLayer"])
    fsdp.choose_layers(model, SimpleNamespace(state=SimpleNamespace(fsdp_plugin=chosen)))
    assert chosen.transformer_cls_names_to_wrap == ["BertEmbeddings", "BertLayer"]  # the user's choice stands


def test_bf16_master_weights_are_refused_under_sharding():
    from adapt import fsdp
    from adapt.errors import AdaptError

    fsdp.check_precision("bf16")
    with pytest.raises(AdaptError, match="bf16-master is the speed layer's own master-weight mode and does not apply "
                                         r"to sharded \(FSDP/DeepSpeed\) runs"):
        fsdp.check_precision("bf16-master")


def test_generation_of_a_sharded_model_runs_synced_across_processes(monkeypatch):
    """Under FSDP every new token's forward gathers weights from all processes, so transformers' generate()
    must keep every process stepping until all have finished (`synced_gpus`); it decides so only for a model
    marked FSDP-managed, which Accelerate's fully_shard does not mark. Checked on the decision transformers
    itself makes with 2 processes, for the model generate runs on under peft (LoRA)."""
    import torch
    import transformers.generation.utils as generation
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from adapt import fsdp

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    synced = []

    def unfinished(self, this_peer_finished, synced_gpus, device):  # no process group here: record, then step alone
        synced.append(synced_gpus)
        return not this_peer_finished

    monkeypatch.setattr(generation, "_get_torch_distributed_world_size", lambda: 2)
    monkeypatch.setattr(generation.GenerationMixin, "_has_unfinished_sequences", unfinished)
    prompt = {"input_ids": torch.tensor([[1, 5, 7]]), "max_new_tokens": 2, "do_sample": False, "pad_token_id": 0}
    wrapped.generate(**prompt)
    assert synced and not any(synced)  # as Accelerate leaves a sharded model
    synced.clear()
    fsdp.mark_for_generation(wrapped)
    wrapped.generate(**prompt)
    assert synced and all(synced)
