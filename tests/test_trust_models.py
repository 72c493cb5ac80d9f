"""Models, adapters and safety: LoRA run folders (classification with 3 labels, NER, warm-started seq2seq)
reload to their own validation predictions with the real label names (adapt predict, adapt eval --model, adapt
export --merge + plain transformers); nothing runs remote code or unpickles weights unless the current command
says so; peft's default LoRA targets; generation configs that transformers will save; decoder classifiers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.recipe import PeftConfig, resolve_recipe
from adapt.tasks import get_task
from conftest import run_tiny_finetune, sentiment_rows, write_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from lora_roundtrip import ner_tags_with_transformers  # noqa: E402  (decoding without adapt)

NEUTRAL = ["a film", "it is a movie", "the film was shown on tuesday", "a story about a town", "two hours long",
           "it has actors", "a sequel", "shot in colour", "released in may", "a drama"]
NER_WORDS = (["Alice", "Bob", "Carol"], ["Paris", "Berlin", "Rome"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# ---- LoRA round trips -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_three_labels(tiny_bert, tmp_path_factory) -> Path:
    """A LoRA run of the tiny BERT on a 3-label file (negative/neutral/positive)."""
    root = tmp_path_factory.mktemp("lora3")
    rows = sentiment_rows() + [(text, "neutral") for text in NEUTRAL * 2]
    train = write_table(root / "three.csv", rows)
    run_tiny_finetune(tiny_bert, train, root / "run", root / "cache",
                      overrides=[("peft", {"method": "lora"}), ("data.label_names", None),
                                 ("data.validation_fraction", 0.25)])
    return root / "run"


def test_lora_folder_carries_the_label_config(lora_three_labels):
    config = json.loads((lora_three_labels / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert (lora_three_labels / "adapter_model.safetensors").exists()


def test_lora_three_labels_reload_gives_the_validation_predictions(lora_three_labels):
    from adapt.runner import load_trained, predict_stream

    rows = read_jsonl(lora_three_labels / "predictions_validation.jsonl")
    task, model = load_trained(str(lora_three_labels))
    assert task.label_names == ["negative", "neutral", "positive"]
    predicted = list(predict_stream(task, model, [r["text"] for r in rows]))
    assert [p["label"] for p in predicted] == [r["prediction"] for r in rows]
    # the same model, not a near one: the run scored its saved weights (fp32 base and adapter, no bf16 rounding)
    assert [p["score"] for p in predicted] == pytest.approx([r["score"] for r in rows], abs=1e-7)


def test_lora_three_labels_cli_predict_eval_and_merged_pipeline(lora_three_labels, tmp_path):
    from transformers import pipeline

    rows = read_jsonl(lora_three_labels / "predictions_validation.jsonl")
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(r["text"] + "\n" for r in rows))
    result = cli("predict", "--model", str(lora_three_labels), "--file", str(texts))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == [r["prediction"] for r in rows]

    data = write_table(tmp_path / "val.csv", [(r["text"], r["label"]) for r in rows])
    out = tmp_path / "eval.json"
    result = cli("eval", "--model", str(lora_three_labels), "--data", str(data), "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    expected = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    report = json.loads(out.read_text())
    assert report["scores"]["model"]["accuracy"] == pytest.approx(expected)
    assert [r["prediction"] for r in report["examples"]] == [r["prediction"] for r in rows]

    merged = tmp_path / "merged"
    result = cli("export", "--model", str(lora_three_labels), "--output", str(merged), "--merge")
    assert result.exit_code == 0, result.output
    assert json.loads((merged / "config.json").read_text())["id2label"]["1"] == "neutral"
    labels = [o["label"] for o in pipeline("text-classification", model=str(merged))([r["text"] for r in rows])]
    assert labels == [r["prediction"] for r in rows]


def write_conll(path: Path, n: int) -> Path:
    names, places = NER_WORDS
    lines = []
    for i in range(n):
        name, place = names[i % 3], places[(i // 3) % 3]
        lines += [f"{name} B-PER", "visited O", f"{place} B-LOC", ". O", ""]
    path.write_text("\n".join(lines))
    return path


def test_lora_ner_reload_predict_and_merged_pipeline(tiny_bert, tmp_path):
    from transformers import pipeline

    from adapt.runner import load_trained, merge_adapter, predict_stream
    from adapt.train import finetune

    train, val = write_conll(tmp_path / "train.txt", 24), write_conll(tmp_path / "val.txt", 6)
    run = tmp_path / "run"
    finetune(resolve_recipe("ner", [
        ("model", str(tiny_bert)), ("data.train", str(train)), ("data.validation", str(val)), ("data.test", None),
        ("data.label_names", None), ("train.max_steps", 4), ("train.batch_size", 8), ("train.lr", 1e-3),
        ("output_dir", str(run)), ("tracking", []), ("peft", {"method": "lora"})]))
    rows = read_jsonl(run / "predictions_validation.jsonl")
    task, model = load_trained(str(run))
    assert task.label_names == ["O", "B-LOC", "B-PER"]
    predicted = [p["tags"] for p in predict_stream(task, model, [" ".join(r["tokens"]) for r in rows])]
    assert predicted == [r["prediction"] for r in rows]

    merged = merge_adapter(str(run), str(tmp_path / "merged"))
    config = json.loads((merged / "config.json").read_text())
    assert config["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER"}
    assert ner_tags_with_transformers(merged, [r["tokens"] for r in rows]) == [r["prediction"] for r in rows]
    found = pipeline("token-classification", model=str(merged))(" ".join(rows[0]["tokens"]))
    assert {e["entity"] for e in found} <= {"B-LOC", "B-PER"}  # real names, never LABEL_1


def test_seq2seq_lora_run_folder_predicts_like_its_validation(tiny_bert, tmp_path):
    from adapt.runner import load_trained, predict_stream
    from adapt.train import finetune

    rows = [{"source": f"we study model {i}. results improve.", "target": f"model {i} improves"} for i in range(10)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    finetune(resolve_recipe("summarize", [
        ("model", str(tiny_bert)), ("data.train", str(train)), ("data.validation", str(train)), ("data.test", None),
        ("train.max_steps", 2), ("train.batch_size", 4), ("output_dir", str(run)), ("tracking", []),
        ("task_options.num_beams", 1), ("task_options.max_new_tokens", 5), ("peft", {"method": "lora"})]))
    assert json.loads((run / "config.json").read_text())["model_type"] == "encoder-decoder"
    saved = read_jsonl(run / "predictions_validation.jsonl")
    task, model = load_trained(str(run))
    predicted = [p["generated_text"] for p in predict_stream(task, model, [r["source"] for r in saved])]
    assert predicted == [r["prediction"] for r in saved]


# ---- safety: remote code, pickles, missing files ------------------------------------------------------

def remote_code_folder(folder: Path, marker: Path) -> Path:
    """A model folder whose config needs custom code that, if ever imported, writes `marker`."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "adapt_probe", "auto_map": {"AutoConfig": "probe.ProbeConfig",
                                                  "AutoModelForSequenceClassification": "probe.ProbeModel"}}))
    (folder / "probe.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                     "from transformers import PretrainedConfig\n"
                                     "class ProbeConfig(PretrainedConfig):\n    model_type = 'adapt_probe'\n")
    return folder


def test_folder_recipe_cannot_switch_on_remote_code(lora_three_labels, tmp_path):
    folder = remote_code_folder(tmp_path / "model", tmp_path / "marker")
    shutil.copy(lora_three_labels / "tokenizer.json", folder)
    shutil.copy(lora_three_labels / "tokenizer_config.json", folder)
    recipe = (lora_three_labels / "recipe.yaml").read_text().replace("trust_remote_code: false",
                                                                     "trust_remote_code: true")
    assert "trust_remote_code: true" in recipe
    (folder / "recipe.yaml").write_text(recipe)
    for args in (("predict", "--model", str(folder), "a film"),
                 ("eval", "--model", str(folder), "--data", str(write_table(tmp_path / "v.csv", [("a", "neutral")])))):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "--trust-remote-code" in result.output
        assert not (tmp_path / "marker").exists()


def test_pickled_adapter_is_refused(lora_three_labels, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(lora_three_labels, folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    result = cli("predict", "--model", str(folder), "a film")
    assert result.exit_code == 2
    assert "adapter_model.bin" in result.output and "safetensors only" in result.output
    assert result.output.count("\n") == 1


def test_model_folder_with_only_pickle_weights_is_one_line(tiny_bert, tmp_path):
    from transformers import BertForSequenceClassification

    folder = tmp_path / "bin_model"
    model = BertForSequenceClassification.from_pretrained(tiny_bert)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    shutil.copy(tiny_bert / "tokenizer.json", folder)
    shutil.copy(tiny_bert / "tokenizer_config.json", folder)
    assert not list(folder.glob("*.safetensors"))
    result = cli("predict", "--model", str(folder), "a film")  # no recipe.yaml: use eval with a recipe
    assert result.exit_code == 2
    task = get_task(resolve_recipe("sentiment", [("model", str(folder))]))
    with pytest.raises(AdaptError, match=r"bin_model: holds only pickle weights .*safetensors"):
        task.pretrained_model(str(folder))


def test_predict_missing_file_is_found_before_the_model_loads(tmp_path):
    result = cli("predict", "--model", str(tmp_path / "no_model"), "--file", str(tmp_path / "missing.txt"))
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --file {tmp_path / 'missing.txt'}: no such file; give a text file " \
                                    "with one input per line"


# ---- LoRA targets ---------------------------------------------------------------------------------

def tiny_config(kind: str):
    import transformers

    common = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32)
    if kind == "gemma":
        return transformers.GemmaConfig(**common, num_key_value_heads=1, head_dim=8)
    if kind == "gemma2":
        return transformers.Gemma2Config(**common, num_key_value_heads=1, head_dim=8)
    if kind == "phi3":
        return transformers.Phi3Config(**common, num_key_value_heads=2, pad_token_id=0)
    if kind == "opt":
        return transformers.OPTConfig(vocab_size=64, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                      ffn_dim=32, word_embed_proj_dim=16)
    if kind == "mbart":
        return transformers.MBartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                        decoder_ffn_dim=32)
    raise ValueError(kind)


@pytest.mark.parametrize("kind,task_name", [("gemma", "clm"), ("gemma2", "clm"), ("phi3", "clm"), ("opt", "clm"),
                                            ("mbart", "seq2seq")])
def test_peft_default_lora_targets_cover_more_model_types(kind, task_name):
    import transformers
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    from adapt.lora import linear_layer_names, wrap_with_peft

    config = tiny_config(kind)
    auto = transformers.AutoModelForCausalLM if task_name == "clm" else transformers.AutoModelForSeq2SeqLM
    bare = auto.from_config(config)
    # peft's own list where it has one (gemma, gemma2, opt), otherwise every linear layer but the head
    expected = set(PEFT_DEFAULTS.get(config.model_type, [])) or set(linear_layer_names(bare)) - {"lm_head"}
    model = wrap_with_peft(bare, PeftConfig(), get_task_class(task_name))
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if ".lora_A" in name}
    assert adapted == expected
    assert model.peft_config["default"].task_type == get_task_class(task_name).peft_task_type


def get_task_class(name: str):
    from adapt.tasks import task_class

    return task_class(name)


def test_model_type_without_peft_default_gets_all_linear(tiny_bert):
    from transformers import EncoderDecoderModel

    from adapt.lora import default_target_modules

    pair = EncoderDecoderModel.from_encoder_decoder_pretrained(str(tiny_bert), str(tiny_bert))
    assert default_target_modules(pair, "lora") == ["query", "value"]  # peft's BERT entry for both halves

    class Unknown(torch.nn.Module):
        config = type("C", (), {"model_type": "not-in-peft"})()

    assert default_target_modules(Unknown(), "lora") == "all-linear"


def test_target_modules_that_match_nothing_is_one_line(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from adapt.lora import wrap_with_peft

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    with pytest.raises(AdaptError, match=r"peft.target_modules: \['q_proj'\] match no layer of this bert model; "
                                         r"name some of its linear layers \(.*query.*\)"):
        wrap_with_peft(model, PeftConfig(target_modules=["q_proj"]), get_task_class("classification"))


# ---- generation configs -----------------------------------------------------------------------------

def decoder_tokenizer(folder: Path, pad: bool = False):
    """A word-level fast tokenizer with <s>/</s> (and <pad> only if `pad`), saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", "a", "film", "good", "bad", "movie"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        **({"pad_token": "<pad>"} if pad else {}))
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_instruct_sampling_defaults_and_eos_list_survive_the_save(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "llama"
    decoder_tokenizer(folder)
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    # Llama-3 instruct ships sampling settings without do_sample, and two EOS ids
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2, 4], "temperature": 0.6, "top_p": 0.9}))
    task = get_task(resolve_recipe("clm", [("model", str(folder))]))
    task.load_tokenizer(str(folder))
    model = task.build_model(str(folder))  # greedy (temperature 0): validated here, before training
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [2, 4] and saved["do_sample"] is False and "temperature" not in saved
    assert task.stop_token_ids(model) == [2, 4]


def test_bart_early_stopping_with_sampling_recipe_saves(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    folder = tmp_path / "bart"
    decoder_tokenizer(folder, pad=True)
    BartForConditionalGeneration(BartConfig(vocab_size=16, d_model=16, encoder_layers=1, decoder_layers=1,
                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                            encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=3, bos_token_id=1,
                                            eos_token_id=2, decoder_start_token_id=2)).save_pretrained(folder)
    GenerationConfig(early_stopping=True, num_beams=4, no_repeat_ngram_size=3, decoder_start_token_id=2,
                     eos_token_id=2, pad_token_id=3).save_pretrained(folder)
    task = get_task(resolve_recipe("summarize", [("model", str(folder)), ("task_options.temperature", 0.7)]))
    task.load_tokenizer(str(folder))
    model = task.build_model(str(folder))
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert saved["do_sample"] is True and saved["num_beams"] == 1 and "early_stopping" not in saved


def test_decoder_classifier_pads_batches_with_eos(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path / "llama"
    decoder_tokenizer(folder)  # no pad token, like Llama/GPT-2 tokenizers
    LlamaModel(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    task = get_task(resolve_recipe("sentiment", [("model", str(folder))]))
    task.load_tokenizer(str(folder))
    task.label_names = ["bad", "good"]
    model = task.build_model(str(folder))
    assert task.tokenizer.pad_token == "</s>" and model.config.pad_token_id == 2
    batch = task.collate({"input_ids": [[4, 5], [4, 5, 6, 8]], "attention_mask": [[1, 1], [1, 1, 1, 1]]})
    assert model(**batch).logits.shape == (2, 2)


def test_qa_lora_run_folder_reloads_to_its_validation_answers(tiny_bert, tmp_path):
    from adapt.runner import evaluate_model
    from test_task_qa import squad_document, write_json

    from adapt.train import finetune

    run = tmp_path / "run"
    squad = write_json(tmp_path / "squad.json", squad_document(6))
    finetune(resolve_recipe("qa", [
        ("model", str(tiny_bert)), ("data.train", squad), ("data.validation", squad), ("data.test", None),
        ("train.max_steps", 2), ("train.batch_size", 4), ("train.max_length", 48), ("task_options.doc_stride", 16),
        ("output_dir", str(run)), ("tracking", []), ("peft", {"method": "lora"})]))
    saved = read_jsonl(run / "predictions_validation.jsonl")
    result = evaluate_model(str(run), squad, None, [])
    assert [r["prediction_text"] for r in result["predictions"]] == [r["prediction_text"] for r in saved]


# ---- multilingual seq2seq tokenizers ------------------------------------------------------------------

@pytest.fixture
def tiny_mbart(tmp_path) -> Path:
    """A tiny random mBART with an mBART tokenizer (language codes such as en_XX, de_DE as special tokens)."""
    from transformers import MBartConfig, MBartForConditionalGeneration, MBartTokenizer

    folder = tmp_path / "mbart"
    words = ["<s>", "<pad>", "</s>", "<unk>", "a", "film", "good", "ein", "gut"]
    tokenizer = MBartTokenizer(vocab=[(w, 0.0) for w in words])
    tokenizer.save_pretrained(folder)
    MBartForConditionalGeneration(MBartConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2)).save_pretrained(folder)
    return folder


def test_mbart_language_codes_reach_the_tokenizer_and_generation(tiny_mbart):
    task = get_task(resolve_recipe("translate-encdec", [("model", str(tiny_mbart)), ("task_options.src_lang", "en_XX"),
                                                 ("task_options.tgt_lang", "de_DE")]))
    tokenizer = task.load_tokenizer(str(tiny_mbart))
    en, de = tokenizer.convert_tokens_to_ids("en_XX"), tokenizer.convert_tokens_to_ids("de_DE")
    assert tokenizer("a film").input_ids[-2:] == [tokenizer.eos_token_id, en]
    assert tokenizer(text_target="ein film").input_ids[-2:] == [tokenizer.eos_token_id, de]
    assert task.generation_settings()["forced_bos_token_id"] == de
    model = task.build_model(str(tiny_mbart))
    assert model.generation_config.forced_bos_token_id == de


def test_unknown_language_code_is_one_line(tiny_mbart):
    task = get_task(resolve_recipe("translate-encdec", [("model", str(tiny_mbart)), ("task_options.tgt_lang", "xx_YY")]))
    with pytest.raises(AdaptError, match=r"task_options.tgt_lang: 'xx_YY' is no language code of the tokenizer"):
        task.load_tokenizer(str(tiny_mbart))


# ---- export never destroys a run or files adapt did not write (wave 2) -------------------------------

def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where, relation", [("run", "is the run folder"), ("run/merged", "is inside the run folder"),
                                             (".", "holds the run folder")])
def test_export_into_its_own_run_folder_is_refused(lora_three_labels, tmp_path, monkeypatch, where, relation):
    shutil.copytree(lora_three_labels, tmp_path / "run")
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = cli("export", "--model", "run", "--output", where, "--merge", "--overwrite")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --output {where} {relation} run; exporting there would replace or alter "
                                     "the run: choose an --output outside it")
    assert tree(tmp_path) == before


def test_export_overwrite_refuses_a_folder_adapt_did_not_write(lora_three_labels, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = cli("export", "--model", str(lora_three_labels), "--output", str(mine), "--merge", "--overwrite")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --overwrite: {mine} is not an adapt export or run (no adapt recipe.yaml "
                                     "beside a model), so adapt will not delete it; remove it yourself or choose "
                                     "another --output")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary export left beside it


def test_export_overwrite_replaces_an_earlier_export(lora_three_labels, tmp_path):
    out = tmp_path / "merged"
    assert cli("export", "--model", str(lora_three_labels), "--output", str(out), "--merge").exit_code == 0
    first = tree(out)
    result = cli("export", "--model", str(lora_three_labels), "--output", str(out), "--merge", "--overwrite")
    assert result.exit_code == 0, result.output
    assert tree(out) == first  # the same adapter merges to the same files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ---- adapters name an absolute local base; a missing base is one line (wave 2) -------------------------

def test_lora_on_a_relative_local_model_records_its_absolute_path(tiny_bert, monkeypatch):
    from adapt.lora import wrap_with_peft

    monkeypatch.chdir(tiny_bert.parent)
    task = get_task(resolve_recipe("sentiment", [("model", tiny_bert.name)]))
    wrapped = wrap_with_peft(task.pretrained_model(tiny_bert.name, num_labels=2), PeftConfig(method="lora"), task)
    assert wrapped.peft_config["default"].base_model_name_or_path == str(tiny_bert.resolve())


def _predict_error_from(folder, monkeypatch) -> str:
    """The one line `adapt predict --model run` prints from `folder`, which must exit with code 2."""
    monkeypatch.chdir(folder)
    result = cli("predict", "--model", "run", "a film")
    assert result.exit_code == 2, result.output
    return result.output.strip()


def _with_base(lora_run: Path, folder: Path, base: str) -> Path:
    shutil.copytree(lora_run, folder)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


def test_adapter_whose_local_base_is_missing_is_one_line_without_the_hub(lora_three_labels, tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    folder = _with_base(lora_three_labels, tmp_path / "run", "./models/tiny")
    assert _predict_error_from(tmp_path, monkeypatch) == (
        f"error: run/adapter_config.json: base_model_name_or_path './models/tiny' is no folder (seen from {tmp_path}); "
        "set base_model_name_or_path in that file to the base model's folder (an absolute path) or Hub id, then run "
        "the command again")
    assert folder.exists()


def test_adapter_base_offline_and_not_cached_is_one_line(lora_three_labels, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    _with_base(lora_three_labels, tmp_path / "run", "tiny")
    data = write_table(tmp_path / "v.csv", [("a", "neutral")])
    result = cli("eval", "--model", str(tmp_path / "run"), "--data", str(data))
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"error: {tmp_path / 'run/adapter_config.json'}: base_model_name_or_path "
                                            "'tiny' is no folder here (seen from ")
    assert "nor a model in the Hugging Face cache (HF_HUB_OFFLINE is set)" in result.output


# ---- NaN/inf in a checkpoint is named as such, before any write (wave 2) --------------------------------

def _nan_copy(folder: Path, target: Path, key_end: str) -> tuple[Path, str]:
    """A copy of a model folder with the first safetensors weight ending in `key_end` set to NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, target)
    weights = load_file(target / "model.safetensors")
    key = next(k for k in weights if k.endswith(key_end))
    weights[key][0, 0] = float("nan")
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target, key


def test_nan_in_the_base_checkpoint_is_named_before_the_output_dir(tiny_bert, tmp_path, adapt_cache):
    model, key = _nan_copy(tiny_bert, tmp_path / "nan_bert", "layer.0.attention.self.query.weight")
    out = tmp_path / "out"
    data = write_table(tmp_path / "train.csv", sentiment_rows())
    result = cli("finetune", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
                 "tracking=[]")
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error == [f"error: {model}: the checkpoint holds NaN/inf in weight bert.{key}; it is damaged: use an "
                     "intact copy of the model (download or save it again)"]
    assert not out.exists()


def test_nan_in_a_trained_run_stops_predict_and_eval(tiny_run, tmp_path):
    run, _ = _nan_copy(tiny_run[0], tmp_path / "run", "classifier.weight")
    expected = (f"error: {run}: the checkpoint holds NaN/inf in weight classifier.weight; it is damaged: use an intact "
                "copy of the model (download or save it again)")
    for args in (("predict", "--model", str(run), "great"),
                 ("eval", "--model", str(run), "--data", str(write_table(tmp_path / "v.csv", sentiment_rows())))):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert [line for line in result.output.splitlines() if line.startswith("error:")] == [expected]
        assert "Traceback" not in result.output


def test_adapter_base_on_an_unreachable_hub_is_one_line_without_retries(lora_three_labels, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    asked = []

    def unreachable(repo_id, timeout=None):
        asked.append(repo_id)
        raise ConnectionError("[Errno -2] Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was tried (it retries for minutes)")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    _with_base(lora_three_labels, tmp_path / "run", "tiny")
    assert _predict_error_from(tmp_path, monkeypatch) == (
        f"error: run/adapter_config.json: base_model_name_or_path 'tiny' is no folder here (seen from {tmp_path}) and "
        "the Hugging Face Hub cannot be reached (ConnectionError: [Errno -2] Name or service not known); set "
        "base_model_name_or_path in that file to the base model's folder (an absolute path) or Hub id, then run the "
        "command again")
    assert asked == ["tiny"]
