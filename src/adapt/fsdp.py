"""FSDP2 (PyTorch's `fully_shard`, launched through Accelerate) in adapt's training loop: the model built on
the `meta` device by `cpu_ram_efficient_loading` made ready for Accelerate's sharding, the trainable weights and
optimizer state saved and restored without pickle in the two forms Accelerate's `fsdp_state_dict_type` names,
and the full model gathered for the final save (`torch.distributed.checkpoint.state_dict`, see full_state).

Checkpoint forms (each a folder written by `adapt.checkpoint`, beside the loop's own state):
- `FULL_STATE_DICT`: the full trainable weights and optimizer state (`fsdp-full.safetensors` +
  `fsdp-full.json`), gathered one tensor at a time onto the main process (the others drop each gathered tensor
  at once) and scattered from it on resume;
- `SHARDED_STATE_DICT`: every process writes its own shard of the weights and of the optimizer state
  (`shard-R-of-W.safetensors` + `shard-R-of-W.json`), nothing is gathered; a resume needs the same number of
  processes and the same sharding (the run description records both, `--resume` refuses a change).

The speed layer steps aside under FSDP (see `adapt.speed._sharded`): no bf16 master weights (FSDP's
MixedPrecisionPolicy keeps fp32 sharded parameters and computes in bf16), no fused CPU AdamW, no compacted
embedding rows; PyTorch's AdamW steps the sharded (DTensor) parameters."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapt.errors import AdaptError

FULL, SHARDED = "FULL_STATE_DICT", "SHARDED_STATE_DICT"
FULL_STEM = "fsdp-full"


def refuse_deepspeed_without_gpu() -> None:
    """Refuse (AdaptError) an Accelerate config with DeepSpeed on a machine without CUDA: Accelerate would train
    plain data parallelism in its place on the CPU, and DeepSpeed's own CPU backend did not get through a
    2-process ZeRO-2 step here (see the README). Call before anything is written."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):  # as Accelerate reads it: 1/true/yes/on
        raise AdaptError("the Accelerate config asks for DeepSpeed, which adapt runs on CUDA GPUs only and this "
                         "machine has none; on CPUs shard with FSDP2 instead (examples/accelerate/fsdp.yaml with "
                         "use_cpu: true)")


def enable_on_cpu(accelerator) -> None:
    """Turn on the FSDP2 that `accelerate launch --config_file fsdp.yaml` (`use_cpu: true`) asked for, in a CPU
    process group. Accelerate enables FSDP only on accelerator devices; on the CPU it would quietly train with
    plain DDP while transformers had already built the model on `meta` for FSDP's efficient loading. FSDP2
    itself shards over gloo on the CPU, so the state is set as Accelerate sets it on a GPU: distributed type
    FSDP and the plugin read from the launcher's environment (`FSDP_*` variables), with the run's mixed
    precision. Raises AdaptError for FSDP1 (`fsdp_version: 1`), which adapt does not run on the CPU."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env

    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return
    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise AdaptError("the Accelerate config asks for FSDP version 1, which adapt runs only on GPUs; set "
                         "fsdp_version: 2 (see examples/accelerate/fsdp.yaml)")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    from accelerate.state import PartialState

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState.__init__ records it


def choose_layers(model: torch.nn.Module, accelerator) -> None:
    """With `fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP` and no `fsdp_transformer_layer_cls_to_wrap`,
    Accelerate shards every class in the model's `_no_split_modules`, then the input embedding on its own. Where
    that list names a module holding the input embedding (BERT's `BertEmbeddings`), the embedding would be
    sharded twice and `fully_shard` fails; those classes are left to the root unit, the layers keep their own."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is not None or plugin.auto_wrap_policy is not transformer_auto_wrap_policy:
        return
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    names = list(getattr(model, "_no_split_modules", None) or [])
    holding = {type(m).__name__ for m in model.modules() if embedding is not None and m is not embedding
               and any(child is embedding for child in m.modules())}
    if embedding is not None and holding & set(names):
        plugin.transformer_cls_names_to_wrap = [n for n in names if n not in holding]


def enabled(accelerator) -> bool:
    """Whether `accelerator` shards the model with FSDP2 (`distributed_type: FSDP`, `fsdp_version: 2`)."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def state_dict_type(accelerator) -> str:
    """FULL_STATE_DICT or SHARDED_STATE_DICT, as the Accelerate config (`fsdp_state_dict_type`) says."""
    kind = accelerator.state.fsdp_plugin.state_dict_type
    kind = getattr(kind, "name", str(kind))
    return kind if kind in (FULL, SHARDED) else FULL


def description(accelerator) -> str | None:
    """What the run description records about sharding (a change refuses --resume); None without FSDP."""
    return f"FSDP2 {state_dict_type(accelerator)}" if enabled(accelerator) else None


def check_precision(precision: str) -> None:
    """Refuse `train.mixed_precision: bf16-master` under FSDP or DeepSpeed, whose sharded fp32 parameters are
    the master weights already. Raises AdaptError."""
    if precision == "bf16-master":
        raise AdaptError("train.mixed_precision: bf16-master is the speed layer's own master-weight mode and does not "
                         "apply to sharded (FSDP/DeepSpeed) runs, which keep fp32 master shards; use bf16 or auto")


def materialize(model: torch.nn.Module, device) -> torch.nn.Module:
    """`model` with every tensor on `device`. Under `cpu_ram_efficient_loading` transformers builds the model on
    the `meta` device on every process but the first, and Accelerate then shards it and broadcasts the first
    process's weights into the shards. Meta tensors cannot be copied (`.to()` raises "Cannot copy out of meta
    tensor") and all have `data_ptr() == 0`, which Accelerate uses to map optimizer parameters onto the sharded
    ones; so they get fresh uninitialised storage (never read: overwritten by the broadcast), shared where the
    model ties them. Tensors already holding values (transformers' non-persistent buffers) are only moved."""
    fresh: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, kind).items():
                if tensor is None or not tensor.is_meta:
                    continue
                if id(tensor) not in fresh:
                    empty = torch.empty_like(tensor, device=device)
                    fresh[id(tensor)] = (torch.nn.Parameter(empty, requires_grad=tensor.requires_grad)
                                         if isinstance(tensor, torch.nn.Parameter) else empty)
                getattr(module, kind)[name] = fresh[id(tensor)]
    return model.to(device)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _full(tensor: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor on the CPU (a DTensor is gathered from every process: collective); None where not
    `keep`, the gathered copy dropped at once, so that a process that keeps nothing holds one tensor at most."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().contiguous().cpu() if keep else None


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on the main process, on the CPU, for `save_pretrained(state_dict=...)`
    (collective: every process gathers; the others get {}). `torch.distributed.checkpoint.state_dict` gathers
    one tensor at a time and only the main process keeps it (`full_state_dict` with `cpu_offload`), so no
    other process ever holds the whole model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def mark_for_generation(model: torch.nn.Module) -> None:
    """Make transformers' `generate()` run synchronised (`synced_gpus`) on every process of a sharded model:
    each new token is a forward, which gathers the weights from all processes, so a process whose sequences
    end early must keep stepping until all have ended. transformers turns this on only for a model marked
    `_is_fsdp_managed_module` (its own FSDP2 path sets it; Accelerate's `fully_shard` does not), read on the
    module whose `generate` runs: the prepared model or, under peft, the transformers model it wraps."""
    from transformers import GenerationMixin

    for module in model.modules():
        if isinstance(module, GenerationMixin):
            module._is_fsdp_managed_module = True


def _scatter(full: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of `full` (read on the main process only; None elsewhere), sharded as `like`."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    local = _local(like)
    if full is None:
        full = torch.empty(like.shape, dtype=local.dtype, device=local.device)
    full = full.to(device=local.device, dtype=local.dtype)
    if not isinstance(like, DTensor):
        torch.distributed.broadcast(full, src=0)
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=0).to_local()


class ShardedWeights:
    """The speed layer's TrainableWeights interface (state, load, sync, finalize, ...) for an FSDP2 model: the
    trainable weights are the model's own sharded parameters, stepped as they are (no masters, no compacted
    rows). `state()`, `load()` and the checkpoint methods are collective: every process calls them."""

    master = False
    fused = False
    rows = None

    def __init__(self, model: torch.nn.Module, kind: str, rank: int, world: int):
        self.model, self.kind, self.rank, self.world = model, kind, rank, world
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def named_parameters(self):
        """(name, this process's shard) of each trainable weight (a shard may be empty)."""
        return ((n, _local(p)) for n, p in self.params.items())

    def grads_to_master(self) -> None:
        """Nothing to move: the optimizer steps the model's own parameters."""

    def after_step(self, optimizer) -> None:
        """Nothing to refresh: the optimizer stepped the model's own parameters."""

    def sync(self) -> None:
        """Nothing is deferred."""

    def finalize(self, model) -> None:
        """The model already holds the trained fp32 values."""

    def release_gradients(self) -> None:
        for param in self.params.values():
            param.grad = None

    def state(self) -> dict[str, torch.Tensor]:
        """The full trainable weights on the main process ({} on the others); collective."""
        state = {name: _full(param, keep=self.rank == 0) for name, param in self.params.items()}
        return state if self.rank == 0 else {}

    def load(self, path: Path) -> None:
        """Load full trainable weights (a `model.safetensors` written by `state()`): read by the main process and
        scattered into every process's shards. Raises AdaptError (on every process) when the names do not
        match; collective."""
        state = load_file(str(path)) if self.rank == 0 else {}
        self._check_names(path, set(state))
        with torch.no_grad():
            for name, param in self.params.items():
                _local(param).copy_(_scatter(state.get(name), param))

    def _check_names(self, path: Path, names: set[str]) -> None:
        """Refuse, on every process alike, a file (read on the main process) whose weights are not the model's."""
        verdict = [(len(set(self.params) - names), len(names - set(self.params)))] if self.rank == 0 else [None]
        torch.distributed.broadcast_object_list(verdict, src=0)
        missing, unknown = verdict[0]
        if missing or unknown:
            raise AdaptError(f"{path}: does not match the model ({missing} missing, {unknown} unknown weights); was "
                             "the recipe changed since the checkpoint was written?")

    # ---- checkpoints ----
    def save_checkpoint(self, folder: Path, optimizer) -> None:
        """Write this run's weights and optimizer state into `folder` (every process takes part): gathered
        onto the main process (FULL_STATE_DICT) or each process's shards (SHARDED_STATE_DICT)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        full = self.kind == FULL
        take = (lambda t: _full(t, keep=self.rank == 0)) if full else (lambda t: _local(t).detach().contiguous().cpu())
        tensors = {f"weight/{n}": take(p) for n, p in self.params.items()}
        scalars: dict[str, float] = {}
        tensor_slots: dict[str, list[str]] = {}  # which optimizer slots each weight has (AdamW: step, exp_avg, ...)
        for name, param in self.params.items():
            for slot, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    tensors[f"{slot}/{name}"] = take(value)
                    tensor_slots.setdefault(name, []).append(slot)
                else:
                    scalars[f"{slot}/{name}"] = value
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        if full and self.rank != 0:
            return
        stem = folder / (FULL_STEM if full else f"shard-{self.rank}-of-{self.world}")
        save_file(tensors, f"{stem}.safetensors")
        meta = {"param_groups": groups, "scalars": scalars, "tensor_slots": tensor_slots}
        stem.with_suffix(".json").write_text(json.dumps(meta))

    def load_checkpoint(self, folder: Path, optimizer) -> None:
        """Restore what save_checkpoint wrote into the model's shards and the optimizer. Raises AdaptError when
        the checkpoint was written in the other form or by another number of processes; collective."""
        from torch.distributed.tensor import DTensor

        optimizer = getattr(optimizer, "optimizer", optimizer)
        full = self.kind == FULL
        stem = folder / (FULL_STEM if full else f"shard-{self.rank}-of-{self.world}")
        if not stem.with_suffix(".safetensors").exists():
            holds = "full FSDP state" if full else f"shard {self.rank} of {self.world}"
            raise AdaptError(f"--resume: {folder} holds no {holds} "
                             "(it was written with another fsdp_state_dict_type, number of processes, or without "
                             "FSDP); resume with the Accelerate config and process count it was trained with")
        reads = not full or self.rank == 0
        tensors = load_file(f"{stem}.safetensors") if reads else {}
        meta = json.loads(stem.with_suffix(".json").read_text())  # small: every process reads it
        with torch.no_grad():
            for name, param in self.params.items():
                weight = tensors.get(f"weight/{name}")
                _local(param).copy_(_scatter(weight, param) if full else weight)
                state = {}
                for key, value in meta["scalars"].items():
                    slot, _, owner = key.partition("/")
                    if owner == name:
                        state[slot] = value
                for slot in meta["tensor_slots"].get(name, []):
                    value = tensors.get(f"{slot}/{name}")
                    if value is None and reads:
                        raise AdaptError(f"--resume: {stem}.safetensors lacks {slot}/{name}; the checkpoint is damaged")
                    if slot == "step":  # a scalar tensor every process holds alike
                        state[slot] = value.clone() if reads else torch.zeros(())
                        if full:
                            torch.distributed.broadcast(state[slot], src=0)
                        continue
                    local = _scatter(value, param) if full else value.to(_local(param).device)
                    state[slot] = (DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                                                      shape=param.shape, stride=param.stride())
                                   if isinstance(param, DTensor) else local)
                if state:
                    optimizer.state[param] = state
        for group, saved in zip(optimizer.param_groups, meta["param_groups"]):
            group.update(saved)


def save_checkpoint(folder: Path, weights: ShardedWeights, optimizer) -> None:
    """`weights.save_checkpoint(folder, optimizer)`: see ShardedWeights; collective. (The loop calls these two,
    not the methods: adapt.train sees trainable weights only through the speed layer's interface, which
    tests/test_structure.py checks.)"""
    weights.save_checkpoint(folder, optimizer)


def load_checkpoint(folder: Path, weights: ShardedWeights, optimizer) -> None:
    """`weights.load_checkpoint(folder, optimizer)`: see ShardedWeights; collective. Raises AdaptError."""
    weights.load_checkpoint(folder, optimizer)


def missing_forwards(batches: int, accelerator) -> int:
    """How many extra forward passes this process runs so that every process runs as many as the busiest one:
    each FSDP forward gathers the weights from all processes, so unequal counts would wait forever."""
    count = torch.tensor([batches], device=accelerator.device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count) - batches
