"""Exact resume of the speed layer's compacted embedding rows: a checkpoint taken at any step (as a signal takes
it) leaves the run's arithmetic unchanged and restores the skipped rows' pending decay, and `load` reaches the
model even after its parameter's storage was replaced (as a multi-process `accelerator.prepare` does). The
2-process end-to-end check is tests/test_preemption.py, with the speed layer on."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from adapt import checkpoint
from adapt.errors import AdaptError
from adapt.recipe import resolve_recipe
from adapt.speed import Optimization
from adapt.speed.precision import ROWS_FILE, TrainableWeights
from adapt.train import linear_schedule
from test_precision import USED, VOCAB, WORD, batches, tiny_bert

STEPS, STOP = 6, 3
RECIPE = [("train.lr", "1e-3"), ("train.weight_decay", "0.1")]


def setup(master: bool):
    model = tiny_bert()
    if master:
        model.to(torch.float32)
    recipe = resolve_recipe("sentiment", RECIPE)
    opt = Optimization(TrainableWeights(model, master=master, used_token_ids=USED), recipe)
    return model, opt, linear_schedule(opt.optimizer, 2, STEPS)


def steps(model, opt, scheduler, data) -> None:
    for batch in data:
        model(**batch).loss.backward()
        opt.update(model, Accelerator(cpu=True))
        scheduler.step()


@pytest.mark.parametrize("master", [False, True])
def test_a_checkpoint_at_any_step_resumes_bitwise(tmp_path, master):
    data = batches(STEPS)
    model, opt, scheduler = setup(master)
    steps(model, opt, scheduler, data)
    reference = opt.weights.state()

    model, opt, scheduler = setup(master)
    steps(model, opt, scheduler, data[:STOP])
    checkpoint.save_main_state(tmp_path, opt.weights.checkpoint_state(tmp_path), opt.optimizer, scheduler, {})
    assert opt.weights.rows.decay != 1.0  # the snapshot folded nothing into the running table
    assert load_file(str(tmp_path / ROWS_FILE)).keys() == {"decay"}  # the table is in model.safetensors alone
    steps(model, opt, scheduler, data[STOP:])
    assert all(torch.equal(opt.weights.state()[n], reference[n]) for n in reference)  # the saving run

    def resumed() -> dict[str, torch.Tensor]:
        model, opt, scheduler = setup(master)
        checkpoint.load_state(tmp_path, opt.weights, opt.optimizer, scheduler)
        steps(model, opt, scheduler, data[STOP:])
        return opt.weights.state()

    state = resumed()
    for name in reference:
        assert torch.equal(state[name], reference[name]), name
    # without the pending decay the skipped rows are decayed in two roundings: not bitwise
    (tmp_path / ROWS_FILE).unlink()
    state = resumed()
    assert not torch.equal(state[WORD], reference[WORD])
    torch.testing.assert_close(state[WORD], reference[WORD], rtol=1e-6, atol=0)


def test_load_reaches_the_model_after_its_parameter_storage_was_replaced(tmp_path):
    model, opt, _ = setup(False)
    saved = {n: torch.randn_like(t) for n, t in opt.weights.state().items()}
    save_file(saved, str(tmp_path / "model.safetensors"))
    table = model.get_input_embeddings().weight
    table.data = table.data.clone()  # what DDP set-up in `accelerator.prepare` may do to a parameter
    opt.weights.load(tmp_path / "model.safetensors")
    assert torch.equal(model.get_input_embeddings().weight, saved[WORD])
    assert torch.equal(dict(opt.weights.named_parameters())[WORD], saved[WORD][USED])


def test_rows_of_another_table_are_refused(tmp_path):
    model, opt, _ = setup(False)
    state = opt.weights.state()
    save_file({**state, WORD: torch.zeros(VOCAB + 1, 32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(AdaptError, match=rf"model.safetensors: an embedding table of shape \({VOCAB + 1}, 32\), the "
                                         rf"model's is \({VOCAB}, 32\); was the recipe changed"):
        opt.weights.load(tmp_path / "model.safetensors")


def test_skipped_rows_that_are_not_the_runs_initial_rows_decayed_are_refused(tmp_path):
    """A checkpoint holds the skipped rows once, as `base * decay`; a resumed run keeps its own `base` (the
    model's initial rows) and takes up the saved decay, so rows the saved decay does not explain are refused."""
    model, opt, _ = setup(False)
    save_file(opt.weights.state(), str(tmp_path / "model.safetensors"))  # the initial rows, decay 1
    save_file({"decay": torch.tensor([0.5], dtype=torch.float64)}, str(tmp_path / ROWS_FILE))
    with pytest.raises(AdaptError, match=rf"model.safetensors: the embedding rows the run skipped are not the model's "
                                         rf"initial rows decayed as {ROWS_FILE} says; was the model or recipe changed"):
        opt.weights.load(tmp_path / "model.safetensors")
