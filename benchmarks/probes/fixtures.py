"""Tiny random checkpoints the probes train and load, built once per output folder (`<out>/fixtures/`).

Each is a real architecture with a real tokenizer and the settings of the public checkpoints it stands for
(generation configs with sampling values and several EOS ids, no padding token, BART's beam settings),
but 2 layers of width 32, so a probe run takes seconds on a CPU."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's special tokens: <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2
SMOL_EOS, SMOL_BOS, SMOL_ENDOFTEXT = 2, 1, 0
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _atomic_build(target: Path, build) -> Path:
    """Run `build(tmp)` into a temp folder beside `target` and rename it into place (skip when present)."""
    if (target / ".done").exists():
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / ".done").write_text("")
    tmp.rename(target)
    return target


class Fixtures:
    """Lazily built model folders; `fx.path("llama")` builds the tiny Llama on first use."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    env: dict = {}  # the environment the CLI runs under (set by the harness)
    builders: dict = {}  # more named folders: name -> build(folder) (e.g. data files at a stable path)

    def path(self, name: str) -> Path:
        builder = self.builders.get(name) or getattr(self, f"_build_{name}")
        return _atomic_build(self.root / name, builder)

    def run(self, name: str, files: dict, argv: list[str]) -> Path:
        """A finished `adapt` run shared by several probes: `files` written, `argv` run once in a folder
        that is returned (the run itself is its `out/`). A failing command is an error of the set-up."""
        import subprocess

        def build(folder: Path) -> None:
            for rel, content in files.items():
                (folder / rel).write_text(content, encoding="utf-8")
            proc = subprocess.run(argv, cwd=folder, env=self.env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or [""])[-1]
                raise RuntimeError(f"shared run {name} exited {proc.returncode}: {tail[:200]}")

        return _atomic_build(self.root / "runs" / name, build)

    # ---- tokenizers -----------------------------------------------------------------------------------
    def _build_smoltok(self, folder: Path) -> None:
        """SmolLM2's byte-level BPE tokenizer (49,152 tokens), read from the embedded GGUF file."""
        from transformers import AutoTokenizer

        from adapt.assets import _MODELS, _locate

        gguf = _locate(_MODELS, "smollm2", "model")
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)

    def _smol_tokenizer(self, folder: Path, pad: bool = True) -> int:
        """Copy the SmolLM2 tokenizer into `folder`; without `pad` it has no padding token (like GPT-2,
        Llama and Mistral checkpoints). Returns the vocabulary size."""
        source = self.path("smoltok")
        for item in source.iterdir():
            if item.name != ".done":
                shutil.copy(item, folder / item.name)
        if not pad:
            config = json.loads((folder / "tokenizer_config.json").read_text())
            config.pop("pad_token", None)
            _write_json(folder / "tokenizer_config.json", config)
        return 49152

    # ---- encoders -------------------------------------------------------------------------------------
    def _build_bert(self, folder: Path) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_bert

        build_tiny_bert(folder)

    def _build_bert64(self, folder: Path) -> None:
        """A BERT whose position table has 64 rows (recipes ask for max_length 128)."""
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_bert

        build_tiny_bert(folder, max_position_embeddings=64)

    def _build_bert_bin(self, folder: Path) -> None:
        """The tiny BERT with its weights as a pickled pytorch_model.bin and no safetensors."""
        import torch
        from safetensors.torch import load_file

        for item in self.path("bert").iterdir():
            if item.name not in (".done", "model.safetensors"):
                shutil.copy(item, folder / item.name)
        torch.save(load_file(str(self.path("bert") / "model.safetensors")), folder / "pytorch_model.bin")

    def _build_remote_code(self, folder: Path) -> None:
        """A model folder whose config names a model type only its own shipped Python file defines."""
        for item in self.path("bert").iterdir():
            if item.name != ".done":
                shutil.copy(item, folder / item.name)
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type="probe_custom", architectures=["ProbeModel"],
                      auto_map={"AutoConfig": "modeling_probe.ProbeConfig", "AutoModel": "modeling_probe.ProbeModel"})
        _write_json(folder / "config.json", config)
        (folder / "modeling_probe.py").write_text(REMOTE_CODE)

    def _build_roberta(self, folder: Path) -> None:
        """RoBERTa with a byte-level BPE tokenizer (words need their leading space: `Ġlives`)."""
        import torch
        from transformers import RobertaConfig, RobertaModel

        vocab = self._smol_tokenizer(folder)
        torch.manual_seed(0)
        RobertaModel(RobertaConfig(vocab_size=vocab, max_position_embeddings=130, pad_token_id=SMOL_EOS,
                                   bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS, **TINY)).save_pretrained(folder)

    # ---- decoders -------------------------------------------------------------------------------------
    def _decoder(self, folder: Path, config, model_class, pad: bool, generation: dict | None) -> None:
        import torch

        self._smol_tokenizer(folder, pad=pad)
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        if generation is not None:  # written as the Hub files are, not through GenerationConfig's validation
            _write_json(folder / "generation_config.json", {"_from_model_config": False, **generation})

    def _build_llama(self, folder: Path) -> None:
        """Llama with 64 positions, no padding token and Llama-3's two EOS ids in its generation config."""
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=49152, num_key_value_heads=1, max_position_embeddings=64,
                             bos_token_id=SMOL_BOS, eos_token_id=[SMOL_EOS, SMOL_ENDOFTEXT], **TINY)
        self._decoder(folder, config, LlamaForCausalLM, pad=False,
                      generation={"bos_token_id": SMOL_BOS, "eos_token_id": [SMOL_EOS, SMOL_ENDOFTEXT]})

    def _build_llama_sampling(self, folder: Path) -> None:
        """Llama whose generation config carries `temperature: 0.6, top_p: 0.9` without `do_sample`, as the
        Llama-3 and Qwen2.5 instruct checkpoints ship it."""
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=49152, num_key_value_heads=1, max_position_embeddings=64,
                             bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS, **TINY)
        self._decoder(folder, config, LlamaForCausalLM, pad=True,
                      generation={"bos_token_id": SMOL_BOS, "eos_token_id": SMOL_EOS, "temperature": 0.6,
                                  "top_p": 0.9})

    def _build_gpt2(self, folder: Path) -> None:
        """GPT-2 with 64 positions and no padding token."""
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=49152, n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                            bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS)
        self._decoder(folder, config, GPT2LMHeadModel, pad=False, generation=None)

    def _build_qwen2(self, folder: Path) -> None:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(vocab_size=49152, num_key_value_heads=1, max_position_embeddings=128,
                             bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS, **TINY)
        self._decoder(folder, config, Qwen2ForCausalLM, pad=False, generation=None)

    def _build_gemma(self, folder: Path) -> None:
        from transformers import GemmaConfig, GemmaForCausalLM

        config = GemmaConfig(vocab_size=49152, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                             bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS, pad_token_id=SMOL_EOS, **TINY)
        self._decoder(folder, config, GemmaForCausalLM, pad=True, generation=None)

    def _build_gemma2(self, folder: Path) -> None:
        from transformers import Gemma2Config, Gemma2ForCausalLM

        config = Gemma2Config(vocab_size=49152, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                              sliding_window=32, bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS,
                              pad_token_id=SMOL_EOS, **TINY)
        self._decoder(folder, config, Gemma2ForCausalLM, pad=True, generation=None)

    def _build_phi3(self, folder: Path) -> None:
        from transformers import Phi3Config, Phi3ForCausalLM

        config = Phi3Config(vocab_size=49152, num_key_value_heads=1, max_position_embeddings=128,
                            bos_token_id=SMOL_BOS, eos_token_id=SMOL_EOS, pad_token_id=SMOL_EOS, **TINY)
        self._decoder(folder, config, Phi3ForCausalLM, pad=True, generation=None)

    def _build_opt(self, folder: Path) -> None:
        from transformers import OPTConfig, OPTForCausalLM

        config = OPTConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                           word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=SMOL_BOS,
                           eos_token_id=SMOL_EOS, pad_token_id=SMOL_EOS)
        self._decoder(folder, config, OPTForCausalLM, pad=True, generation=None)

    # ---- encoder-decoders -----------------------------------------------------------------------------
    def _seq2seq(self, folder: Path, config_class, model_class, generation: dict) -> None:
        import torch
        from transformers import AutoTokenizer

        from adapt.assets import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded:minilm"))
        tokenizer.save_pretrained(folder)
        ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                   eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.sep_token_id,
                   forced_eos_token_id=tokenizer.sep_token_id)
        config = config_class(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, max_position_embeddings=128, **ids)
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        _write_json(folder / "generation_config.json", {"_from_model_config": False, **ids, **generation})

    def _build_bart(self, folder: Path) -> None:
        """BART with facebook/bart-base's generation settings (beam search with `early_stopping: true`)."""
        from transformers import BartConfig, BartForConditionalGeneration

        self._seq2seq(folder, BartConfig, BartForConditionalGeneration,
                      {"early_stopping": True, "num_beams": 4, "no_repeat_ngram_size": 3})

    def _build_mbart(self, folder: Path) -> None:
        from transformers import MBartConfig, MBartForConditionalGeneration

        self._seq2seq(folder, MBartConfig, MBartForConditionalGeneration, {"num_beams": 4})


# Imported only if something trusts the folder's code; leaves a marker file in the working directory.
REMOTE_CODE = '''
from pathlib import Path
Path("REMOTE_CODE_RAN").write_text("modeling_probe.py was imported")
from transformers import BertConfig, BertModel


class ProbeConfig(BertConfig):
    model_type = "probe_custom"


class ProbeModel(BertModel):
    config_class = ProbeConfig
'''
