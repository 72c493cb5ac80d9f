"""The weights the optimizer updates. Usually the model's own trainable parameters; in `bf16-master` mode
the model computes forward and backward in bf16 while the optimizer updates fp32 master copies, which
avoids autocast's per-op casts (and its fp32 weight gradients) without losing the small updates fp32
accumulation keeps."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapt.errors import AdaptError

# Stepping only the used rows pays while they are a minority: past this share the gather and scatter of the
# rows cost about what the skipped work saves.
MAX_USED_ROW_SHARE = 0.5
# a checkpoint's skipped embedding rows and their pending decay (TrainableWeights.save_rows), beside its weights
ROWS_FILE = "embedding_rows.safetensors"


class UsedEmbeddingRows:
    """The input-embedding rows of the tokens the training data contains. Every other row gets a zero gradient
    at every step, so AdamW's moments for it stay zero and its whole update is the weight decay
    `p *= 1 - lr * wd`. The optimizer therefore steps a compact copy of the used rows only (the table is
    ~half of a small encoder's weights, and a 2,000-sentence SST-2 sample uses 16% of its rows); the other
    rows take their accumulated decay when the weights are next read (`TrainableWeights.sync`). Those rows
    never enter a training forward, so when that happens changes nothing in training.

    In a single process the embedding also emits a sparse gradient (one row per token, summed into the
    compact fp32 buffer), so no table-sized bf16 gradient is zeroed and filled each step; DDP all-reduces
    dense gradients, so with several processes the used rows are gathered from the dense one.

    Both for bf16 masters (`table` is the fp32 master table) and for fp32 training (`table` is the model's own
    embedding weight, whose used rows `TrainableWeights.after_step` refreshes after every step)."""

    def __init__(self, name: str, embedding: torch.nn.Embedding, table: torch.Tensor, index: torch.Tensor):
        self.name = name
        self.embedding = embedding
        # fp32 master of every row, exact as of the last sync; in fp32 training the model's own weight, which is
        # read through the module every time: a tensor kept from before `accelerator.prepare` may no longer be
        # its storage (with DDP the parameter's data is replaced), and then `load` and `sync` would miss the model
        self._master = None if table.data_ptr() == embedding.weight.data_ptr() else table
        self.index = index  # the used rows, sorted
        # row -> position in the compact copy; -1 makes a token outside the used set fail loudly
        self.position = torch.full((table.shape[0],), -1, dtype=torch.long, device=index.device)
        self.position[index] = torch.arange(len(index), device=index.device)
        self.decay = 1.0  # product of (1 - lr * wd) over the steps since the last sync

    @property
    def table(self) -> torch.Tensor:
        """The fp32 master table: the masters' copy in bf16-master mode, else the embedding's current weight."""
        return self.embedding.weight.detach() if self._master is None else self._master

    @staticmethod
    def find(model: torch.nn.Module, fp32: dict[str, torch.Tensor], token_ids: torch.Tensor | None) -> UsedEmbeddingRows | None:
        """The used rows of `model`'s input embedding, when stepping them alone is exact and pays: the table is
        trained, used by nothing else (a tied output layer's gradient reaches every row), and mostly unused."""
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if token_ids is None or not isinstance(embedding, torch.nn.Embedding):
            return None
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is embedding.weight]
        if len(names) != 1 or names[0] not in fp32 or len(token_ids) > MAX_USED_ROW_SHARE * embedding.num_embeddings:
            return None
        return UsedEmbeddingRows(names[0], embedding, fp32[names[0]], token_ids.to(embedding.weight.device))

    def sparse_gradients(self, enabled: bool) -> None:
        """Let the embedding emit sparse gradients while training in one process (see the class docstring)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.embedding.sparse = enabled and not (distributed and torch.distributed.get_world_size() > 1)

    def compact_gradient(self, grad: torch.Tensor, out: torch.Tensor) -> None:
        """The used rows' gradient, from the embedding's sparse or dense (bf16 or fp32) gradient, into fp32 `out`
        ([len(index), hidden])."""
        if grad.is_sparse:  # uncoalesced: repeated tokens are summed here, in fp32
            out.zero_()
            out.index_add_(0, self.position[grad._indices()[0]], grad._values().float())
        else:
            out.copy_(grad.index_select(0, self.index))


class TrainableWeights:
    def __init__(self, model: torch.nn.Module, master: bool, used_token_ids: torch.Tensor | None = None,
                 fused: bool = False):
        """`used_token_ids`: every token id the training data can feed the model; the input-embedding rows of
        other tokens are left out of the optimizer (see UsedEmbeddingRows), in bf16-master mode and in fp32
        (`master=False`: pass them only for fp32 weights trained in one process or with DDP, whose clipping
        reads the dense gradients before `grads_to_master` compacts them).
        `fused`: the optimizer will be `FusedMasterAdamW`, which reads the gradients through `fused_sources`
        and, in bf16-master mode, refreshes the bf16 model weights itself; in fp32 it steps the model's own
        weights in place (one pass for all of them instead of torch's pass per tensor)."""
        self.master = master
        self.fused = fused
        self.rows: UsedEmbeddingRows | None = None
        self._grad_buffers: dict[str, torch.Tensor] | None = None
        if master:
            fp32 = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
            self.rows = UsedEmbeddingRows.find(model, fp32, used_token_ids)
            if self.rows:
                fp32[self.rows.name] = self.rows.table.index_select(0, self.rows.index)
                self.rows.sparse_gradients(True)
            model.to(torch.bfloat16)
            self.params = {n: torch.nn.Parameter(t) for n, t in fp32.items()}
        self.model_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not master:
            self.params = dict(self.model_params)
            own = {n: p.detach() for n, p in self.model_params.items()}  # the table is the model's own weight
            self.rows = UsedEmbeddingRows.find(model, own, used_token_ids)
            if self.rows:
                self.params[self.rows.name] = torch.nn.Parameter(self.rows.table.index_select(0, self.rows.index))
                self.rows.sparse_gradients(True)

    def named_parameters(self):
        return self.params.items()

    def _is_rows(self, name: str) -> bool:
        return self.rows is not None and name == self.rows.name

    def grads_to_master(self) -> None:
        """After backward: move the bf16 gradients onto the fp32 masters, in one fused copy into buffers
        allocated once (a per-parameter `.float()` costs ~5% of a small model's step). Without masters (fp32),
        only the used embedding rows' gradient moves, onto their compact copy."""
        if not self.master:
            if self.rows and self.model_params[self.rows.name].grad is not None:
                self.params[self.rows.name].grad = self._rows_gradient()
                self.model_params[self.rows.name].grad = None
            return
        if self._grad_buffers is None:
            self._grad_buffers = {n: torch.empty_like(p) for n, p in self.params.items()}
        names = [n for n, p in self.model_params.items() if p.grad is not None]
        dense = [n for n in names if not self._is_rows(n)]
        torch._foreach_copy_([self._grad_buffers[n] for n in dense], [self.model_params[n].grad for n in dense])
        if len(dense) < len(names):
            self.rows.compact_gradient(self.model_params[self.rows.name].grad, self._grad_buffers[self.rows.name])
        for name in names:
            self.params[name].grad = self._grad_buffers[name]
            self.model_params[name].grad = None

    def fused_sources(self) -> dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
        """For FusedMasterAdamW, after backward: each master's gradient as backward left it (bf16, or fp32
        without masters; for the used embedding rows, compacted into fp32) and the bf16 model weight it
        refreshes (none for the embedding table, of which `after_step` copies only the used rows, nor in
        fp32, where the stepped weight is the model's)."""
        sources = {}
        for name, model_param in self.model_params.items():
            if model_param.grad is None:
                continue
            if self._is_rows(name):
                sources[self.params[name]] = (self._rows_gradient(), None)
            else:
                sources[self.params[name]] = (model_param.grad, model_param.detach() if self.master else None)
        return sources

    def _rows_gradient(self) -> torch.Tensor:
        """The used rows' gradient compacted from the model table's, in a buffer allocated once."""
        name = self.rows.name
        if self._grad_buffers is None:
            self._grad_buffers = {}
        if name not in self._grad_buffers:
            self._grad_buffers[name] = torch.empty_like(self.params[name])
        self.rows.compact_gradient(self.model_params[name].grad, self._grad_buffers[name])
        return self._grad_buffers[name]

    def release_gradients(self) -> None:
        """After the last update: drop the gradients and their fp32 buffers."""
        for param in self.params.values():
            param.grad = None
        self._grad_buffers = None

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After an optimizer step: note the decay of the rows it skipped, and refresh the bf16 model weights
        (the fused optimizer has refreshed all but the embedding rows, and leaves the gradients to drop); in
        fp32, copy the stepped rows into the model's table."""
        if not (self.master or self.rows):
            return
        if self.rows:
            compact = self.params[self.rows.name]
            group = next(g for g in optimizer.param_groups if any(p is compact for p in g["params"]))
            self.rows.decay *= 1.0 - group["lr"] * group["weight_decay"]
        if self.fused:
            for param in self.model_params.values():
                param.grad = None
        self._refresh_model(rows_only=self.fused or not self.master)

    def _refresh_model(self, rows_only: bool = False) -> None:
        """Copy the masters into the bf16 model; of the embedding table, only the used rows."""
        with torch.no_grad():
            if not rows_only:
                names = [n for n in self.params if not self._is_rows(n)]
                torch._foreach_copy_([self.model_params[n] for n in names], [self.params[n] for n in names])
            if self.rows:
                table = self.model_params[self.rows.name]
                table.index_copy_(0, self.rows.index, self.params[self.rows.name].detach().to(table.dtype))

    def sync(self) -> None:
        """Bring the skipped embedding rows up to date, in the master table and in the model, before anything
        reads them: evaluation, checkpoints, the final save."""
        if not self.rows:
            return
        rows = self.rows
        with torch.no_grad():
            if rows.decay != 1.0:
                rows.table.mul_(rows.decay)  # the used rows are overwritten next
                rows.decay = 1.0
            rows.table.index_copy_(0, rows.index, self.params[rows.name].detach())
            if self.master:  # in fp32 the table is the model's weight
                self.model_params[rows.name].copy_(rows.table)

    def _masters(self) -> dict[str, torch.Tensor]:
        """Every trainable weight's master value, the embedding table whole and up to date."""
        self.sync()
        masters = dict(self.params)
        if self.rows:
            masters[self.rows.name] = self.rows.table
        return masters

    def state(self, checkpoint: Path | None = None) -> dict[str, torch.Tensor]:
        """Every trainable weight's master value as CPU tensors, after a `sync` (the model's table made whole).
        With `checkpoint` (the folder of a checkpoint being written): the same values without the `sync` (see
        `snapshot`), and the skipped embedding rows written into that folder (`save_rows`) for `load`."""
        if checkpoint is not None:
            self.save_rows(checkpoint)
            return self.snapshot()
        return {n: t.detach().contiguous().cpu() for n, t in self._masters().items()}

    def snapshot(self) -> dict[str, torch.Tensor]:
        """What `state()` returns, without its `sync`: for checkpoints, which a signal may take at any step and
        which must leave the run's arithmetic as it was, so the skipped rows' pending decay is applied to a copy,
        not folded into the table (see `save_rows`)."""
        masters = dict(self.params)
        if self.rows:
            rows = self.rows
            with torch.no_grad():  # as `sync` computes it, on a copy
                table = rows.table * rows.decay if rows.decay != 1.0 else rows.table.clone()
                table.index_copy_(0, rows.index, self.params[rows.name].detach().to(table.dtype))
            masters[rows.name] = table
        return {n: t.detach().contiguous().cpu() for n, t in masters.items()}

    def save_rows(self, folder: Path) -> None:
        """Beside a checkpoint's weights (`snapshot()`), the skipped embedding rows as the run holds them: the table
        as of the last sync and the decay pending since (float64), in `ROWS_FILE`. `load` restores them, so that
        a resumed run applies the decay at the same steps, with the same rounding, as an uninterrupted one
        ((t * a) * b is not t * (a * b) in floating point); nothing is written without skipped rows."""
        if self.rows:
            save_file({"table": self.rows.table.detach().contiguous().cpu(),
                       "decay": torch.tensor([self.rows.decay], dtype=torch.float64)}, str(folder / ROWS_FILE))

    def _load_rows(self, path: Path) -> None:
        """Restore what `save_rows` wrote (after `load` has restored the weights and the used rows)."""
        saved = load_file(str(path))
        rows = self.rows
        if saved["table"].shape != rows.table.shape:
            raise AdaptError(f"{path}: an embedding table of shape {tuple(saved['table'].shape)}, the model's is "
                             f"{tuple(rows.table.shape)}; was the recipe changed since the checkpoint was written?")
        with torch.no_grad():
            rows.table.copy_(saved["table"])
            rows.decay = float(saved["decay"][0])
            rows.table.index_copy_(0, rows.index, self.params[rows.name].detach())
            if self.master:  # the model's bf16 table as the run had it: the skipped rows as of the last sync
                self.model_params[rows.name].copy_(rows.table)

    def load(self, path: Path) -> None:
        state = load_file(str(path))
        missing = [n for n in self.params if n not in state]
        unknown = [n for n in state if n not in self.params]
        if missing or unknown:
            raise AdaptError(f"{path}: does not match the model ({len(missing)} missing, {len(unknown)} unknown "
                             "weights); was the recipe changed since the checkpoint was written?")
        with torch.no_grad():
            for name, value in state.items():
                if self._is_rows(name):
                    self.rows.table.copy_(value)
                    self.rows.decay = 1.0
                    value = self.rows.table.index_select(0, self.rows.index)
                self.params[name].copy_(value)
        if self.master:
            self._refresh_model()
        self.sync()
        if self.rows and (path.parent / ROWS_FILE).exists():
            self._load_rows(path.parent / ROWS_FILE)

    def finalize(self, model: torch.nn.Module) -> None:
        """Put the fp32 master values back into an fp32 model, for saving (in fp32, bring the skipped
        embedding rows up to date)."""
        if self.master or self.rows:
            masters = self._masters()
            if self.rows:  # the saved module must not ask its users for sparse gradients
                self.rows.sparse_gradients(False)
        if self.master:
            model.to(torch.float32)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in masters:
                        param.copy_(masters[name])
