"""Issue 15, metrics and `adapt eval`: seqeval parity with seqeval's default mode (IOB1 and IOB2), BLEU
tokenizers from the target language with sacreBLEU's signature, literal user text in tables, per-example rows
only in --output, and one-line errors (exit 2) for data a metric cannot score."""

import json
from pathlib import Path

import pytest
import sacrebleu
from rich.console import Console
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.metrics import bleu_score, seqeval_scores
from adapt.scoring import render, score_files

# hand-made cases: (references, predictions); IOB2, IOB1 (entities may start with I-), ill-formed predictions
CASES = {
    "iob2": ([["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-MISC"]],
             [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "I-ORG", "O", "O"]]),
    "iob1": ([["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "O"], ["O", "I-ORG", "O"]],
             [["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "O"], ["O", "I-ORG", "O"]]),
    "ill_formed": ([["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O", "B-MISC"], ["O", "B-PER"]],
                   [["I-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O", "I-MISC"], ["B-PER", "I-PER"]]),
    "type_switch": ([["B-PER", "I-LOC", "I-LOC", "O"]], [["B-PER", "B-LOC", "I-LOC", "O"]]),
    "iobes": ([["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "I-LOC"]]),
}


def write_lines(path: Path, lines) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def run(*args):
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["eval", *args])


@pytest.mark.parametrize("case", sorted(CASES))
def test_seqeval_headline_equals_seqeval_default_mode(case, tmp_path):
    references, predictions = CASES[case]
    scores = seqeval_scores(predictions, references)
    assert scores["f1"] == pytest.approx(f1_score(references, predictions), abs=1e-6)
    assert scores["precision"] == pytest.approx(precision_score(references, predictions), abs=1e-6)
    assert scores["recall"] == pytest.approx(recall_score(references, predictions), abs=1e-6)
    # the same through `adapt eval --metric seqeval` on plain and JSONL files
    pred_txt = write_lines(tmp_path / "p.txt", [" ".join(t) for t in predictions])
    ref_txt = write_lines(tmp_path / "r.txt", [" ".join(t) for t in references])
    pred_jsonl = write_lines(tmp_path / "p.jsonl", [{"tags": t} for t in predictions])
    for files in ((pred_txt, ref_txt), (pred_jsonl, ref_txt)):
        result = run("-m", "seqeval", "-p", files[0], "-r", files[1], "--json")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)["scores"]["seqeval"]
        assert printed["f1"] == pytest.approx(f1_score(references, predictions), abs=1e-6)


def test_seqeval_strict_iob2_reported_beside_the_headline():
    references, predictions = CASES["ill_formed"]
    scores = seqeval_scores(predictions, references)
    assert scores["strict_scheme"] == "IOB2"
    assert scores["strict_f1"] == pytest.approx(f1_score(references, predictions, mode="strict", scheme=IOB2))
    assert scores["f1"] == pytest.approx(4 / 5)  # lenient: I-PER I-PER and I-MISC count as entities
    assert scores["strict_f1"] == pytest.approx(0.5)  # strict IOB2: 2 of 4 predicted spans, 2 of 4 gold


def test_identical_iob1_files_score_f1_one_over_all_entities(tmp_path):
    references = CASES["iob1"][0]  # 4 entities: PER, LOC, LOC, ORG (the first three start with I-)
    path = write_lines(tmp_path / "iob1.txt", [" ".join(t) for t in references])
    scores = score_files(["seqeval"], path, [path])["scores"]["seqeval"]
    assert (scores["f1"], scores["strict_f1"], scores["strict_scheme"]) == (1.0, 1.0, "IOB1")
    assert {name: row["support"] for name, row in scores["per_type"].items()} == {"PER": 1, "LOC": 2, "ORG": 1}


@pytest.mark.parametrize("lines, message", [
    (["B-PER O", "O U-LOC"], "line 2: tag 'U-LOC' is BILOU"),
    (["B-PER O", "PER O"], "line 2: tag 'PER' is neither 'O' nor a B-/I-/E-/S- prefix"),
    (["B-PER O", "O"], "p.txt line 2: 1 tags but"),
])
def test_seqeval_refuses_tags_it_cannot_score_with_file_and_line(tmp_path, lines, message):
    ref = write_lines(tmp_path / "r.txt", ["B-PER O", "O B-LOC"])
    pred = write_lines(tmp_path / "p.txt", lines)
    result = run("-m", "seqeval", "-p", pred, "-r", ref)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.stderr and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_bleu_of_identical_chinese_files_is_100_with_zh_and_its_signature(tmp_path):
    lines = ["我喜欢吃苹果。", "今天天气很好，我们去公园散步吧。"]
    zh = write_lines(tmp_path / "zh.txt", lines)
    signature = f"nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:{sacrebleu.__version__}"
    for extra in (["--tokenize", "zh"], ["--target-lang", "zh-CN"], []):  # explicit, by language, detected
        result = run("-m", "bleu", "-p", zh, "-r", zh, "--json", *extra)
        assert result.exit_code == 0, result.output
        bleu = json.loads(result.stdout)["scores"]["bleu"]
        assert bleu["bleu"] == pytest.approx(100.0) and bleu["signature"] == signature
    table = run("-m", "bleu", "-p", zh, "-r", zh)
    assert f"sacreBLEU bleu signature: {signature}" in table.stdout
    assert "BLEU tokenize=zh (the references are Chinese text" in table.stdout
    # 13a leaves each unsegmented Chinese line one token: no 2-grams match, BLEU 0 (the fault being fixed)
    assert bleu_score(lines, [lines], tokenize="13a")["bleu"] == 0.0


def test_bleu_tokenizer_choice_japanese_korean_and_default():
    ja = ["私は猫が好きです。"]
    assert bleu_score(ja, [ja]) == bleu_score(ja, [ja], tokenize="ja-mecab")
    assert bleu_score(ja, [ja])["tokenize"] == "ja-mecab" and bleu_score(ja, [ja])["bleu"] == pytest.approx(100.0)
    ko = ["나는 고양이를 좋아합니다."]
    assert bleu_score(ko, [ko])["tokenize"] == "ko-mecab"
    en = ["the cat sat on the mat"]
    assert bleu_score(en, [en])["tokenize"] == "13a" and bleu_score(en, [en], target_lang="de")["tokenize"] == "13a"
    assert "tok:intl" in bleu_score(en, [en], tokenize="intl")["signature"]


def test_bleu_tokenizer_errors_are_one_line(tmp_path, monkeypatch):
    import sacrebleu.utils

    en = write_lines(tmp_path / "en.txt", ["a b c d"])
    result = run("-m", "bleu", "-p", en, "-r", en, "--tokenize", "moses")
    assert result.exit_code == 2 and "unknown BLEU tokenizer 'moses'; sacreBLEU's tokenizers: none, zh, 13a" in result.stderr
    monkeypatch.setattr(sacrebleu.utils, "SACREBLEU_DIR", str(tmp_path / "no-sacrebleu"))
    with pytest.raises(AdaptError, match="'flores200' needs sacreBLEU's SentencePiece model .*does not download"):
        bleu_score(["a"], [["a"]], tokenize="flores200")
    assert not (tmp_path / "no-sacrebleu").exists()  # nothing was downloaded or written
    result = run("-m", "chrf", "-p", en, "-r", en, "--tokenize", "zh")
    assert result.exit_code == 2 and "add --metric bleu or drop them" in result.stderr


def test_user_text_in_brackets_is_shown_literally(tmp_path):
    labels = ["because [the leads] are", "[bold]fine[/bold]", ":smile:"] * 2
    path = write_lines(tmp_path / "labels.txt", labels)
    result = run("-m", "f1", "-p", path, "-r", path)
    assert result.exit_code == 0, result.output
    for label in ("f1_per_class.because [the leads] are", "f1_per_class.[bold]fine[/bold]", "f1_per_class.:smile:"):
        assert label in result.stdout
    console = Console(record=True, width=200)
    render({"scores": {"accuracy": {"accuracy": 1.0}}, "notes": ["file [the leads].txt"]}, console)
    assert "file [the leads].txt" in console.export_text()

    from adapt.ui import console as ui_console
    from adapt.ui import prediction_table

    with ui_console.capture() as captured:
        ui_console.print(prediction_table([{"input": {"text": "because [the leads] are"}, "label": "[neg]"}]))
        ui_console.print("warning: [the leads] :smile:")
    assert "because [the leads] are" in captured.get() and "label=[neg]" in captured.get()
    assert "warning: [the leads] :smile:" in captured.get()


def test_eval_model_keeps_per_example_rows_out_of_json_and_honours_the_cap(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    rows = ["text,label"] + [f"review number {i} was {'great' if i % 2 else 'awful'},"
                             f"{'positive' if i % 2 else 'negative'}" for i in range(12)]
    data = write_lines(tmp_path / "eval.csv", rows)
    output = tmp_path / "out.json"
    result = run("--model", str(run_dir), "--data", data, "data.max_eval_examples=5", "--json", "--output", str(output))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert "examples" not in printed and "predictions" not in printed["scores"]["model"]
    assert "review number" not in result.stdout
    written = json.loads(output.read_text())
    assert len(written["examples"]) == 5 and written["examples"][0]["text"] == "review number 0 was awful"
    table = run("--model", str(run_dir), "--data", data)
    assert table.exit_code == 0 and "review number" not in table.stdout


def test_metric_on_data_it_cannot_score_is_one_line_exit_2(tmp_path):
    ok = write_lines(tmp_path / "ok.txt", ["pos", "neg"])
    cases = [
        (["-m", "accuracy", "-p", write_lines(tmp_path / "empty.txt", []), "-r", ok], "empty.txt is empty"),
        (["-m", "accuracy", "-p", write_lines(tmp_path / "three.txt", ["pos", "neg", "pos"]), "-r", ok],
         "three.txt has 3 examples but"),
        (["-m", "accuracy", "-p", write_lines(tmp_path / "nan.jsonl", [{"label": "pos"}, '{"label": NaN}']), "-r", ok],
         "nan.jsonl line 2: label nan is not a class"),
        (["-m", "squad", "-p", write_lines(tmp_path / "cls.jsonl", [{"label": "pos"}]),
          "-r", write_lines(tmp_path / "cls_ref.jsonl", [{"label": "pos"}])],
         "cls.jsonl line 1: missing the field 'id'; squad metrics read SQuAD .jsonl"),
        (["-m", "bleu", "-p", write_lines(tmp_path / "num.jsonl", [{"text": 3}]),
          "-r", write_lines(tmp_path / "ref.jsonl", [{"text": "3"}])], "num.jsonl line 1: text 3 is not a string"),
        (["-m", "accuracy", "-p", ok, "-r", ok, "data.max_eval_examples=5"], "applies only with --model DIR"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("gpt2")
    words = "the cat sat on a mat and dog ran".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)
    config = GPT2Config(vocab_size=10, n_positions=16, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_perplexity_is_per_model_token_and_refuses_windows_past_the_positions(tiny_gpt2, tmp_path):
    text = write_lines(tmp_path / "t.txt", ["the cat sat on a mat", "and the dog ran on the mat"])
    result = run("-m", "perplexity", "--model", str(tiny_gpt2), "--text-file", text, "--max-length", "32")
    assert result.exit_code == 2
    assert result.stderr == (f"error: --max-length 32 is past the 16 positions of {tiny_gpt2} (config "
                             "max_position_embeddings); use --max-length 16 or less\n")
    result = run("-m", "perplexity", "--model", str(tiny_gpt2), "--text-file", text, "--max-length", "8",
                 "--stride", "4", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["scores"]["perplexity"]["unit"] == "per model token"
    assert printed["scores"]["perplexity"]["tokens"] == 12
    assert printed["notes"][0].startswith("perplexity is per model token: exp of the mean NLL over 12 tokens")
    short = write_lines(tmp_path / "short.txt", ["cat"])
    result = run("-m", "perplexity", "--model", str(tiny_gpt2), "--text-file", short, "--max-length", "8")
    assert result.exit_code == 2 and "short.txt: no tokens were scored" in result.stderr


def test_accumulating_bleu_takes_the_tokenizer_choice():
    from adapt.metrics import load

    metric = load("bleu")
    metric.add_batch(predictions=["今天天气很好"], references=[["今天天气很好"]])
    scores = metric.compute(target_lang="zh")
    assert scores["bleu"] == pytest.approx(100.0) and "|tok:zh|" in scores["signature"]


@pytest.mark.parametrize("texts, language", [
    (["我用iPhone拍照。"], "zh"),  # one Latin word among four Han characters
    (["the cat sat on the mat 猫"], None),
    (["私は猫が好きです。"], "ja"),
    (["나는 고양이를 좋아합니다."], "ko"),
    (["hello world", None], None),  # None: a missing reference in a sacreBLEU stream
])
def test_detect_cjk_counts_characters_against_words(texts, language):
    from adapt.metrics.generation import detect_cjk

    assert detect_cjk(texts) == language


# ---- `adapt eval --metric perplexity --model X`: models loaded as `adapt predict` loads them ----------------
def tiny_causal_lm(folder: Path, eos: bool = False) -> Path:
    """A 1-layer GPT-2 over a 10-word vocabulary (with an `<eos>` token when `eos`: what `adapt finetune`
    of the clm recipe needs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", *"the cat sat on a mat and dog ran".split(), *(["<eos>"] if eos else [])]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"eos_token": "<eos>", "pad_token": "<eos>"} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special).save_pretrained(folder)
    end = len(words) - 1 if eos else 0
    config = GPT2Config(vocab_size=len(words), n_positions=16, n_embd=8, n_layer=1, n_head=2, bos_token_id=end,
                        eos_token_id=end)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_perplexity_model_that_cannot_load_is_one_line_exit_2(tiny_gpt2, tiny_bert, tiny_run, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import BartConfig, BartForConditionalGeneration

    text = write_lines(tmp_path / "t.txt", ["the cat sat on a mat", "and the dog ran on the mat"])
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_gpt2, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    remote = tmp_path / "remote"
    shutil.copytree(tiny_gpt2, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="custom_lm", auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                                                     "AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_custom.py").write_text("raise SystemExit('shipped code ran')\n")
    seq2seq = tmp_path / "bart"
    shutil.copytree(tiny_gpt2, seq2seq)
    (seq2seq / "model.safetensors").unlink()
    BartForConditionalGeneration(BartConfig(vocab_size=10, d_model=8, encoder_layers=1, decoder_layers=1,
                                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=8,
                                            decoder_ffn_dim=8, max_position_embeddings=16)).save_pretrained(seq2seq)
    run_dir = tiny_run[0]
    cases = [
        (tmp_path / "missing", f"error: --model {tmp_path / 'missing'}: no such folder; give a causal LM folder"),
        (pickled, f"error: {pickled}: holds only pickle weights (*.bin), and adapt loads safetensors only"),
        (remote, f"error: {remote}: its model type needs code shipped with the checkpoint"),
        (seq2seq, f"error: {seq2seq} is an encoder-decoder (seq2seq) model (model type bart), not a causal LM"),
        (run_dir, f"error: {run_dir} holds a classification model (its recipe.yaml), not a causal LM"),
        (tiny_bert, f"error: {tiny_bert}: its predictions read later tokens (model type bert is a bidirectional "
                    "encoder, not a causal LM)"),
    ]
    for model, message in cases:
        result = run("-m", "perplexity", "--model", str(model), "--text-file", text, "--max-length", "8")
        assert result.exit_code == 2, (model, result.output)
        # in-process runs show transformers' weight-loading progress bar, which the CLI turns off
        lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
                 if line.strip() and not line.startswith("Loading weights")]
        assert len(lines) == 1 and lines[0].startswith(message), result.stderr
        assert "Traceback" not in result.output


def test_perplexity_of_a_lora_clm_run_is_the_adapted_model(tmp_path, adapt_cache):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_causal_lm(tmp_path / "base", eos=True)
    train = write_lines(tmp_path / "train.txt", ["the cat sat on a mat and the dog ran on the mat"] * 8
                        + ["", "a dog sat on the cat and a mat ran"] * 4)
    run_dir = tmp_path / "run"
    trained = CliRunner(env={"COLUMNS": "200"}).invoke(app, [
        "finetune", "--recipe", "clm", "--model", str(base), "--data", train, "--output-dir", str(run_dir),
        "--max-steps", "3", "--lr", "5e-2", "--batch-size", "2", "tracking=[]", "peft.method=lora",
        "task_options.block_size=8", "task_options.passage_chars=20", "train.max_length=8",
        "train.eval_batch_size=2"])
    assert trained.exit_code == 0, trained.output
    assert (run_dir / "adapter_model.safetensors").exists() and not (run_dir / "model.safetensors").exists()
    line = "the cat sat on a mat and the dog"  # 9 tokens: one window of 8 inputs scores tokens 2..9
    text = write_lines(tmp_path / "t.txt", [line])
    result = run("-m", "perplexity", "--model", str(run_dir), "--text-file", text, "--max-length", "8", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]["perplexity"]
    ids = AutoTokenizer.from_pretrained(base)(line, return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 9 and (scores["tokens"], scores["tokens_dropped"]) == (8, 0)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        expected = float(torch.exp(adapted(input_ids=ids, labels=ids).loss))
        untrained = float(torch.exp(plain(input_ids=ids, labels=ids).loss))
    assert scores["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert abs(expected - untrained) > 1e-3 * untrained  # the adapter was applied, not the bare base model


# ---- issue 15, second wave: -p reads predictions, symmetric tag schemes, labels as finetune reads them, predict input


def test_eval_p_reads_the_prediction_of_a_run_predictions_file_not_its_gold(tmp_path):
    rows = [{"text": "a", "label": "neg", "prediction": "pos", "score": 0.9},
            {"text": "b", "label": "pos", "prediction": "neg", "score": 0.8},
            {"text": "c", "label": "pos", "prediction": "pos", "score": 0.7}]
    run_file = write_lines(tmp_path / "predictions_validation.jsonl", rows)
    gold = write_lines(tmp_path / "gold.txt", ["neg", "pos", "pos"])
    for references in (gold, run_file):  # -r reads the gold side of the same rows
        assert score_files(["accuracy"], run_file, [references])["scores"]["accuracy"]["accuracy"] == pytest.approx(1 / 3)
    predicted = write_lines(tmp_path / "predict.jsonl", [{"input": {"text": "a"}, "label": "neg", "score": 0.6}] * 3)
    assert score_files(["accuracy"], predicted, [gold])["scores"]["accuracy"]["accuracy"] == pytest.approx(1 / 3)


def test_eval_p_reads_predicted_tags_and_generated_text_of_run_rows(tmp_path):
    gold_tags = [["B-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
    predicted_tags = [["B-PER", "O", "O"], ["O", "B-ORG", "I-ORG"]]
    ner = write_lines(tmp_path / "ner.jsonl", [{"tokens": ["w"] * 3, "tags": g, "prediction": p, "entities": []}
                                              for g, p in zip(gold_tags, predicted_tags)])
    scores = score_files(["seqeval"], ner, [ner])["scores"]["seqeval"]
    assert scores["f1"] == pytest.approx(f1_score(gold_tags, predicted_tags)) == pytest.approx(0.8)
    hypotheses, references = ["the cat sat on the mat", "a dog ran"], ["the cat sat on a mat", "a dog ran home"]
    s2s = write_lines(tmp_path / "s2s.jsonl", [{"source": "x", "references": [r], "prediction": h}
                                              for h, r in zip(hypotheses, references)])
    bleu = score_files(["bleu"], s2s, [s2s])["scores"]["bleu"]["bleu"]
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@pytest.mark.parametrize("rows, flag, message", [
    ([{"text": "the cat", "nll": 3.2, "tokens": 2, "perplexity": 4.9}], "-p",
     "clm.jsonl line 1: the row holds per-example perplexity (nll, perplexity), not a prediction; the row has: "
     "text, nll, tokens, perplexity;"),
    ([{"id": 1, "guess": "neg"}], "-p", "clm.jsonl line 1: no prediction field (prediction, label); the row has: id, guess;"),
    ([{"prediction": "neg"}], "-r", "clm.jsonl line 1: no reference field (label); the row has: prediction;"),
])
def test_eval_jsonl_rows_without_the_side_asked_for_are_refused_naming_line_and_fields(tmp_path, rows, flag, message):
    odd = write_lines(tmp_path / "clm.jsonl", rows)
    plain = write_lines(tmp_path / "plain.txt", ["neg"])
    metric = "bleu" if "nll" in rows[0] else "accuracy"
    files = ["-p", odd, "-r", plain] if flag == "-p" else ["-p", plain, "-r", odd]
    result = run("-m", metric, *files)
    assert result.exit_code == 2 and result.stdout == ""
    assert message in result.stderr and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_seqeval_of_iob2_against_iobes_is_the_same_in_either_order(tmp_path):
    iob2 = write_lines(tmp_path / "iob2.txt", ["B-PER O B-LOC I-LOC", "O B-ORG"])
    iobes = write_lines(tmp_path / "iobes.txt", ["S-PER O B-LOC E-LOC", "O S-ORG"])
    forward, backward = (score_files(["seqeval"], p, [r]) for p, r in ((iob2, iobes), (iobes, iob2)))
    assert forward["scores"] == backward["scores"]
    assert (forward["scores"]["seqeval"]["f1"], forward["scores"]["seqeval"]["strict_scheme"]) == (1.0, "IOB2")
    assert any("both were scored as IOB2" in note for note in forward["notes"])
    wrong = write_lines(tmp_path / "wrong.txt", ["B-PER O B-LOC O", "O B-MISC"])  # 1 of 3 entities right
    one, other = (seqeval_scores(p, r) for p, r in (([["B-PER", "O", "B-LOC", "O"], ["O", "B-MISC"]],
                                                     [["S-PER", "O", "B-LOC", "E-LOC"], ["O", "S-ORG"]]),
                                                    ([["S-PER", "O", "B-LOC", "E-LOC"], ["O", "S-ORG"]],
                                                     [["B-PER", "O", "B-LOC", "O"], ["O", "B-MISC"]])))
    assert one["f1"] == other["f1"] == pytest.approx(1 / 3)
    assert score_files(["seqeval"], wrong, [iobes])["scores"]["seqeval"]["f1"] == pytest.approx(1 / 3)


def test_eval_reads_labels_as_finetune_does_trimmed_and_integer_valued(tmp_path):
    predictions = write_lines(tmp_path / "p.txt", ["neg ", " pos", "1.0", "neg"])
    references = write_lines(tmp_path / "r.txt", ["neg", "pos", "1", "pos"])
    scores = score_files(["accuracy", "f1"], predictions, [references])["scores"]
    assert scores["accuracy"]["accuracy"] == 0.75
    assert sorted(scores["f1"]["f1_per_class"]) == ["1", "neg", "pos"]
    jsonl = write_lines(tmp_path / "p.jsonl", [{"label": "neg\t"}, {"label": "pos"}, {"label": 1}, {"label": "pos "}])
    assert score_files(["accuracy"], jsonl, [references])["scores"]["accuracy"]["accuracy"] == 1.0


def _predict(*args, input=None):
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["predict", *args], input=input)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes("great\n".encode("utf-16")), "u16.txt: UTF-16 text, not UTF-8 text; re-save it as UTF-8"),
    (lambda p: p.write_bytes(b"fine\ncaf\xe9\n"), "u16.txt: line 2 is not valid UTF-8 (byte 0xe9)"),
    (lambda p: p.mkdir(), "u16.txt: is a directory"),
])
def test_predict_file_that_is_not_utf8_text_is_one_line_before_the_model_loads(tmp_path, make, message):
    make(tmp_path / "u16.txt")
    result = _predict("--model", str(tmp_path / "no-model"), "--file", str(tmp_path / "u16.txt"))
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.output
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_predict_reads_gz_files_and_refuses_truncated_ones_and_non_utf8_stdin(tiny_run, tmp_path):
    import gzip

    run_dir, _ = tiny_run
    packed = tmp_path / "in.txt.gz"
    packed.write_bytes(gzip.compress(b"great movie\r\n\r\nawful\r\n"))
    result = _predict("--model", str(run_dir), "--file", str(packed))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["input"]["text"] for line in result.stdout.splitlines()] == ["great movie", "awful"]
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(packed.read_bytes()[:15])
    result = _predict("--model", str(run_dir), "--file", str(cut))
    assert result.exit_code == 2 and result.stdout == "" and "cut.txt.gz: cannot be read" in result.stderr
    result = _predict("--model", str(run_dir), input="good\n".encode("utf-16"))
    assert result.exit_code == 2 and "stdin: UTF-16 text, not UTF-8 text" in result.stderr


@pytest.mark.parametrize("size", ["0", "-1"])
def test_predict_refuses_a_batch_size_below_1(tmp_path, size):
    result = _predict("--model", str(tmp_path), "--batch-size", size, "hi")
    assert result.exit_code == 2 and "--batch-size" in result.output and result.stdout.count("{") == 0


def test_predict_never_prints_a_non_finite_score(tiny_run, monkeypatch):
    import adapt.runner

    run_dir, _ = tiny_run
    monkeypatch.setattr(adapt.runner, "predict_stream", lambda *a, **k: iter([
        {"input": {"text": "a"}, "label": "pos", "score": 0.5}, {"input": {"text": "b"}, "label": "pos", "score": float("nan")}]))
    result = _predict("--model", str(run_dir), "a", "b")
    assert result.exit_code == 2 and "NaN" not in result.stdout
    assert f"{run_dir}: input 2 got a non-finite 'score' (nan)" in result.stderr
