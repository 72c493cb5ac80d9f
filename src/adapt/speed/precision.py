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
# a checkpoint's decay of the skipped embedding rows since the run's start (TrainableWeights.save_rows), beside its
# weights
ROWS_FILE = "embedding_rows.safetensors"


class UsedEmbeddingRows:
    """The input-embedding rows of the tokens the training data contains. Every other row gets a zero gradient
    at every step, so AdamW's moments for it stay zero and its whole update is the weight decay
    `p *= 1 - lr * wd`. The optimizer therefore steps a compact copy of the used rows only (the table is
    ~half of a small encoder's weights, and a 2,000-sentence SST-2 sample uses 16% of its rows); the other
    rows are `base * decay` (`base` the fp32 table as the run started, or as `load` set it; `decay` the product
    of the steps' factors since), computed when the weights are next read (`TrainableWeights.sync`). Those rows
    never enter a training forward, so when that happens changes nothing in training, and one rounding of the
    whole product leaves them as exact as they can be, whenever they are read.

    In a single process the embedding also emits a sparse gradient (one row per token, summed into the
    compact fp32 buffer), so no table-sized bf16 gradient is zeroed and filled each step; DDP all-reduces
    dense gradients, so with several processes the used rows are gathered from the dense one.

    Both for bf16 masters and for fp32 training (where the model's own table holds the used rows as
    `TrainableWeights.after_step` refreshes them after every step, and the others as of the last sync)."""

    def __init__(self, name: str, embedding: torch.nn.Embedding, index: torch.Tensor, base: torch.Tensor):
        """`base`: an fp32 [num_embeddings, hidden] table of the rows as training starts, owned by this object
        (in bf16-master mode the master table; in fp32 a copy of the model's)."""
        self.name = name
        self.embedding = embedding
        self.base = base
        self.index = index  # the used rows, sorted
        # row -> position in the compact copy; -1 makes a token outside the used set fail loudly
        self.position = torch.full((embedding.num_embeddings,), -1, dtype=torch.long, device=index.device)
        self.position[index] = torch.arange(len(index), device=index.device)
        self.decay = 1.0  # product of (1 - lr * wd) over the steps since `base` (float64)

    def table(self, used: torch.Tensor) -> torch.Tensor:
        """The whole fp32 table as of now, a new tensor: `base * decay`, with the used rows `used` ([len(index),
        hidden], their compact fp32 master)."""
        with torch.no_grad():
            table = self.base * self.decay if self.decay != 1.0 else self.base.clone()
            return table.index_copy_(0, self.index, used.detach().to(table.dtype))

    @staticmethod
    def find(model: torch.nn.Module, fp32: dict[str, torch.Tensor], token_ids: torch.Tensor | None,
             master: bool) -> UsedEmbeddingRows | None:
        """The used rows of `model`'s input embedding, when stepping them alone is exact and pays: the table is
        trained, used by nothing else (a tied output layer's gradient reaches every row), and mostly unused.
        `fp32`: the trained weights by name, the fp32 masters when `master` (bf16-master mode; the table's is
        taken as `base`), else the model's own (`base` is a copy)."""
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if token_ids is None or not isinstance(embedding, torch.nn.Embedding):
            return None
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is embedding.weight]
        if len(names) != 1 or names[0] not in fp32 or len(token_ids) > MAX_USED_ROW_SHARE * embedding.num_embeddings:
            return None
        table = fp32[names[0]]
        return UsedEmbeddingRows(names[0], embedding, token_ids.to(embedding.weight.device),
                                 table if master else table.clone())

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
            self.rows = UsedEmbeddingRows.find(model, fp32, used_token_ids, master=True)
            if self.rows:
                fp32[self.rows.name] = self.rows.base.index_select(0, self.rows.index)
                self.rows.sparse_gradients(True)
            model.to(torch.bfloat16)
            self.params = {n: torch.nn.Parameter(t) for n, t in fp32.items()}
        self.model_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not master:
            self.params = dict(self.model_params)
            own = {n: p.detach() for n, p in self.model_params.items()}  # the table is the model's own weight
            self.rows = UsedEmbeddingRows.find(model, own, used_token_ids, master=False)
            if self.rows:
                self.params[self.rows.name] = torch.nn.Parameter(self.rows.base.index_select(0, self.rows.index))
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

    def sync(self) -> torch.Tensor | None:
        """Bring the skipped embedding rows of the model up to date before anything reads them: evaluation,
        checkpoints, the final save. Returns the whole fp32 table (None without compacted rows)."""
        if not self.rows:
            return None
        table = self.rows.table(self.params[self.rows.name])
        with torch.no_grad():  # through the parameter: DDP set-up may replace its storage, which a tensor kept
            self.model_params[self.rows.name].copy_(table)  # from before `accelerator.prepare` would then miss
        return table

    def _masters(self) -> dict[str, torch.Tensor]:
        """Every trainable weight's master value, the embedding table whole and up to date (after a `sync`)."""
        masters = dict(self.params)
        if self.rows:
            masters[self.rows.name] = self.sync()
        return masters

    def state(self) -> dict[str, torch.Tensor]:
        """Every trainable weight's master value as CPU tensors, after a `sync` (the model's table made whole)."""
        return {n: t.detach().contiguous().cpu() for n, t in self._masters().items()}

    def checkpoint_state(self, folder: Path) -> dict[str, torch.Tensor]:
        """For a checkpoint being written into `folder`: the values of `state()` without its `sync` (see
        `snapshot`), after writing the skipped rows' decay into `folder` (`save_rows`) for `load`."""
        self.save_rows(folder)
        return self.snapshot()

    def snapshot(self) -> dict[str, torch.Tensor]:
        """What `state()` returns, without its `sync`: for checkpoints, which a signal may take at any step and
        which must leave the run (its model included) as it was."""
        masters = dict(self.params)
        if self.rows:
            masters[self.rows.name] = self.rows.table(self.params[self.rows.name])
        return {n: t.detach().contiguous().cpu() for n, t in masters.items()}

    def save_rows(self, folder: Path) -> None:
        """Beside a checkpoint's weights (`snapshot()`), the skipped embedding rows' decay since `base` (float64),
        in `ROWS_FILE`; nothing is written without skipped rows. `load` takes it up, so that a resumed run
        rounds `base * decay` as an uninterrupted one does, not (table * a) * b."""
        if self.rows:
            save_file({"decay": torch.tensor([self.rows.decay], dtype=torch.float64)}, str(folder / ROWS_FILE))

    def _load_rows(self, table: torch.Tensor, path: Path) -> torch.Tensor:
        """Restore the compacted embedding from a saved whole `table`; returns its used rows. With `ROWS_FILE`
        beside `path` (a checkpoint) the run's `base` stays and the saved decay is taken up, so the skipped
        rows of `table` must be `base * decay`; without, `table` is the new `base`.

        Raises:
            AdaptError: a table of another shape, or skipped rows that are not this run's `base` with the saved
                decay."""
        rows = self.rows
        rows_file = path.parent / ROWS_FILE
        if table.shape != rows.base.shape:
            raise AdaptError(f"{path}: an embedding table of shape {tuple(table.shape)}, the model's is "
                             f"{tuple(rows.base.shape)}; was the recipe changed since the checkpoint was written?")
        table = table.to(rows.base.device)
        used = table.index_select(0, rows.index)
        if rows_file.exists():
            rows.decay = float(load_file(str(rows_file))["decay"][0])
            if not torch.equal(rows.table(used), table):
                raise AdaptError(f"{path}: the embedding rows the run skipped are not the model's initial rows "
                                 f"decayed as {rows_file.name} says; was the model or recipe changed since the "
                                 "checkpoint was written?")
        else:
            with torch.no_grad():
                rows.base.copy_(table)
            rows.decay = 1.0
        return used

    def load(self, path: Path) -> None:
        state = load_file(str(path))
        missing = [n for n in self.params if n not in state]
        unknown = [n for n in state if n not in self.params]
        if missing or unknown:
            raise AdaptError(f"{path}: does not match the model ({len(missing)} missing, {len(unknown)} unknown "
                             "weights); was the recipe changed since the checkpoint was written?")
        with torch.no_grad():
            for name, value in state.items():
                self.params[name].copy_(self._load_rows(value, path) if self._is_rows(name) else value)
        if self.master:
            self._refresh_model()
        self.sync()

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
