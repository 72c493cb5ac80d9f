"""Preference tuning with DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model", arXiv:2305.18290), in adapt's one training loop, with TRL's data and loss semantics
(`trl.DPOTrainer`, TRL 1.16):

- data: rows with `prompt`/`chosen`/`rejected` (TRL's standard preference format; text, or conversational message
  lists rendered with the tokenizer's chat template), or `chosen`/`rejected` alone (implicit prompt): message lists
  split at their longest common prefix of messages (`trl.extract_prompt`), or Anthropic HH-RLHF dialogues
  ("\\n\\nHuman: ...\\n\\nAssistant: ..."), whose prompt is their common text up to its last "\\n\\nAssistant:";
- tokenization as `DPOTrainer._prepare_dataset`: the prompt alone and prompt + response are tokenized, the
  response starts where the two token lists diverge; EOS is appended to text responses (a chat template ends
  its own turns);
- a batch is the chosen sequences then the rejected ones (TRL's concatenated forward: one forward for both);
  log-probabilities are sums over response tokens (prompt tokens are -100);
- the reference model: under LoRA (or any peft adapter) the same model with the adapter disabled (no second
  copy); under full fine-tuning a frozen copy of the starting weights held by the task (kept on the policy's
  device and in its dtype, and run through the same speed-layer attention so that at step 0 the rewards are 0).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import Field

from adapt import assets, data
from adapt.conversation import HH_ASSISTANT, ROLES, ConversationError, parse_hh_dialogue
from adapt.errors import AdaptError
from adapt.tasks.base import Task, TaskOptions, pad_batch
from adapt.tasks.causal_lm import CausalLM, forward

MESSAGE_ROLES = (*ROLES, "tool")  # TRL's conversational data may hold tool turns


class DPOOptions(TaskOptions):
    beta: float = Field(0.1, gt=0, description="DPO's beta: the strength of the KL constraint to the reference "
                                               "(implicit reward = beta * log(policy / reference))")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO (cDPO): the probability "
                                                                  "that a preference label is flipped")
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    chat_template: bool = Field(False, description="render text pairs (HH-RLHF dialogues, or prompt/chosen/"
                                                   "rejected text) as user/assistant turns of the tokenizer's chat "
                                                   "template; message lists always use it")
    reference_model: str | None = Field(None, description="full fine-tuning, `adapt eval` of a saved model: the "
                                                          "reference model (default: the model the run started from)")
    max_prompt_length: int | None = Field(None, ge=1, description="prompts keep their last this many tokens "
                                                                  "(then prompt + response is cut to train.max_length)")
    drop_invalid_rows: bool = Field(False, description="skip pairs that cannot train (an empty or identical response, "
                                                       "no shared prompt, a prompt filling train.max_length, ...) with "
                                                       "a note naming their lines, instead of refusing the data")
    # generation by the trained policy (`adapt predict`), as the clm task
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)


class PairError(ValueError):
    """What is wrong with one preference pair (the caller adds the file and line)."""


# ---- data formats ---------------------------------------------------------------------------------
def hh_messages(text: str) -> list[dict[str, str]]:
    """An Anthropic HH-RLHF dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ..." repeated) as chat messages
    [{"role": "user" | "assistant", "content": ...}], contents stripped of surrounding whitespace
    (`adapt.conversation.parse_hh_dialogue`; a blank turn is kept: `render` refuses an empty response).

    Raises:
        PairError: not an HH-RLHF dialogue (no turn marker, or text before the first), or no Assistant turn."""
    fix = ("; give a prompt column, or chosen/rejected as HH-RLHF dialogues "
           "('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    try:
        messages = parse_hh_dialogue(text, allow_blank_turns=True)
    except ConversationError as err:
        raise PairError(f"no prompt column, and the text is not an HH-RLHF dialogue: {err}{fix}") from None
    if not any(m["role"] == "assistant" for m in messages):
        raise PairError(f"no prompt column, and the HH-RLHF dialogue has no '\\n\\nAssistant:' turn{fix}")
    return messages


def hh_split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two HH-RLHF dialogues: the prompt is their common text up
    to and including its last "\\n\\nAssistant:", each response the rest of its dialogue (usually the final
    Assistant turn, starting with its space). TRL's `extract_prompt` takes the longest common character prefix
    instead; the two differ only when both responses start with the same words, which then sit in the prompt
    under TRL's split (and cancel in the DPO margin either way); here the prompt ends on the turn marker, as
    HH-RLHF's dialogues define it and as a model is prompted at inference.

    Raises:
        PairError: the common text holds no "\\n\\nAssistant:" (not an HH dialogue, or no Assistant turn)."""
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, common)
    if cut < 0:
        raise PairError("no prompt column, and chosen/rejected are not HH-RLHF dialogues that share an "
                        "'\\n\\nAssistant:' turn; give a prompt column, or chosen/rejected as HH-RLHF dialogues "
                        "('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def extract_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) of two conversations: the prompt is their longest common prefix of messages,
    the rest of each is its response (`trl.data_utils.extract_prompt` on message lists)."""
    index = 0
    while index < min(len(chosen), len(rejected)) and chosen[index] == rejected[index]:
        index += 1
    return chosen[:index], chosen[index:], rejected[index:]


def check_messages(value: Any, column: str) -> list[dict[str, str]]:
    """`value` as a list of {"role", "content"} messages with known roles and text content.

    Raises:
        PairError: naming `column` and the first bad message."""
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise PairError(f"'{column}' message {number} is not a {{\"role\": ..., \"content\": text}} object")
        if message.get("role") not in MESSAGE_ROLES:
            raise PairError(f"'{column}' message {number} has role {message.get('role')!r}; roles are "
                            f"{', '.join(MESSAGE_ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """Leading tokens `ids` and `other` share (`trl.data_utils.common_prefix_length`)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


# ---- loss ----------------------------------------------------------------------------------------------
def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of each row's target tokens: logits [rows, length, vocab] at position t score
    labels[t + 1]; labels -100 (prompt, padding) are left out. Returns [rows] float32."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    return -(nll * (targets != -100)).sum(-1)


def dpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair sigmoid DPO loss [pairs] from the log-ratios log pi(y|x) - log pi_ref(y|x) [pairs] of the chosen
    and rejected responses: -log sigmoid(beta * (chosen - rejected)) (Rafailov et al. 2023, eq. 7; TRL's
    `loss_type="sigmoid"`), with `label_smoothing` eps the conservative DPO of Mitchell (2023) ("A note on DPO
    with noisy preferences"; TRL's sigmoid loss before 1.0): -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)."""
    logits = beta * (chosen_logratios - rejected_logratios)
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def peft_model(model):
    """The peft model inside `model` (itself, or under DDP's `.module` / torch.compile's `._orig_mod`), or None."""
    seen = model
    for _ in range(4):
        if hasattr(seen, "disable_adapter") and hasattr(seen, "peft_config"):
            return seen
        seen = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if seen is None:
            return None
    return None


class DPO(CausalLM):
    """Direct Preference Optimization of a causal LM on chosen/rejected pairs (see the module docstring). From the
    clm task it takes only the model side (tokenizer EOS/pad checks, model class, generation settings saved with the
    model for text-generation pipelines); data, batches, loss and metrics are its own."""

    name = "dpo"
    Options = DPOOptions
    default_metric = "rewards/accuracies"
    metric_names = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
                    "logps/rejected", "loss", "pairs")
    greater_is_better = True
    generates = False

    def __init__(self, recipe):
        super().__init__(recipe)
        # rewards/accuracies and margins rise as the policy learns; only the DPO loss falls
        self.greater_is_better = recipe.train.metric_for_best != "loss"
        self.reference_source = None  # full fine-tuning: the frozen starting weights (as loaded)
        self.reference_copy = None  # ... in the policy's dtype/device with the speed layer's attention
        self.reference_key = None

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path):
        return Task.read_file(self, path)

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        raise AdaptError("a DPO run scores preference pairs: give `adapt eval` a file of pairs; to generate, use "
                         "the saved folder as a text-generation model (transformers pipeline, or a clm recipe)")

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Preference pairs in canonical columns: `prompt` (text ready to tokenize: a rendered chat prompt ends
        with the generation prompt), `chosen` and `rejected` (response text that follows it), `templated`
        (rendered by a chat template: no special tokens or EOS added). Every row is checked here, with its line;
        task_options.drop_invalid_rows skips the rows that fail instead (a note names them).

        Raises:
            AdaptError: a missing column; per row (naming its line): a missing/null/empty value, identical chosen
                and rejected, an empty response, HH text without a shared Assistant turn, bad messages, or a
                prompt that leaves no response token within train.max_length."""
        o = self.options
        columns = ds.column_names
        missing = [c for c in (o.chosen_column, o.rejected_column) if c not in columns]
        if missing:
            raise AdaptError(f"{source}: no column {' or '.join(repr(c) for c in missing)} (columns: "
                             f"{', '.join(columns)}); preference data needs 'chosen' and 'rejected' (and optionally "
                             "'prompt'): name them with task_options.chosen_column / rejected_column / prompt_column")
        has_prompt = o.prompt_column in columns
        picked = [o.prompt_column] * has_prompt + [o.chosen_column, o.rejected_column]
        out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "templated": []}
        dropped = []
        for index, row in enumerate(ds.select_columns(picked)):
            try:
                pair = self.canonical_pair(row.get(o.prompt_column) if has_prompt else None,
                                           row[o.chosen_column], row[o.rejected_column], has_prompt)
                self.check_length(pair)
            except PairError as err:
                if not o.drop_invalid_rows:
                    raise AdaptError(f"{source}: {data.row_location(source, index)}: {err} (fix or remove that line, "
                                     "or set task_options.drop_invalid_rows=true to skip such pairs)") from None
                dropped.append(index)
                continue
            for key, value in zip(out, pair):
                out[key].append(value)
        data.note_skipped_rows(source, dropped, len(ds), "pairs")
        return Dataset.from_dict(out)

    def canonical_pair(self, prompt: Any, chosen: Any, rejected: Any, has_prompt: bool) -> tuple[str, str, str, bool]:
        """(prompt text, chosen response text, rejected response text, templated) of one raw pair.

        Raises:
            PairError: what is wrong with it."""
        o = self.options
        names = {"prompt": o.prompt_column, "chosen": o.chosen_column, "rejected": o.rejected_column}
        values = {"chosen": chosen, "rejected": rejected, **({"prompt": prompt} if has_prompt else {})}
        for key, value in values.items():
            if value is None:
                raise PairError(f"'{names[key]}' is missing (null)")
            if not isinstance(value, (str, list)):
                raise PairError(f"'{names[key]}' is not text or a list of messages ({value!r:.40})")
            if isinstance(value, str) and not value.strip() and key == "prompt":
                raise PairError(f"'{names[key]}' is empty")
        if chosen == rejected:
            raise PairError("chosen and rejected are identical; a preference pair needs two different responses")
        if isinstance(chosen, list) or isinstance(rejected, list):
            if not (isinstance(chosen, list) and isinstance(rejected, list)) or (has_prompt and isinstance(prompt, str)):
                raise PairError("the pair mixes text and message lists; give prompt/chosen/rejected all as text or "
                                "all as message lists")
            chosen, rejected = check_messages(chosen, names["chosen"]), check_messages(rejected, names["rejected"])
            if has_prompt:
                prompt = check_messages(prompt, names["prompt"])
            else:
                prompt, chosen, rejected = extract_prompt(chosen, rejected)
            return self.render(prompt, chosen, rejected)
        if has_prompt:
            if o.chat_template:
                return self.render([{"role": "user", "content": prompt}], [{"role": "assistant", "content": chosen}],
                                   [{"role": "assistant", "content": rejected}])
            responses = (chosen, rejected)
        elif o.chat_template:
            prompt, chosen_turns, rejected_turns = extract_prompt(hh_messages(chosen), hh_messages(rejected))
            return self.render(prompt, chosen_turns, rejected_turns)
        else:
            prompt, *responses = hh_split(chosen, rejected)
        for name, response in zip(("chosen", "rejected"), responses):
            if not response.strip():
                raise PairError(f"the {name} response is empty")
        if responses[0] == responses[1]:
            raise PairError("the chosen and rejected responses are identical")
        return prompt, responses[0], responses[1], False

    def render(self, prompt: list, chosen: list, rejected: list) -> tuple[str, str, str, bool]:
        """Conversations through the tokenizer's chat template, as `trl.apply_chat_template` for preference data:
        the prompt with the generation prompt, each response the text that prompt + response adds after their
        common prefix.

        Raises:
            PairError: no prompt turn, a prompt not ending on a user turn, an empty or non-assistant response.
            AdaptError: the tokenizer has no chat template."""
        if not self.tokenizer.chat_template:
            raise AdaptError("the data is conversational (or task_options.chat_template is true), but the tokenizer "
                             "has no chat template; use an instruct model's tokenizer (or set "
                             "task_options.chat_template=false for text)")
        if not prompt:
            raise PairError("chosen and rejected share no prompt turn (they differ from their first message)")
        if prompt[-1]["role"] not in ("user", "tool"):
            raise PairError(f"the prompt ends with a {prompt[-1]['role']} turn; chosen and rejected must differ "
                            "from an assistant turn on")
        for name, turns in (("chosen", chosen), ("rejected", rejected)):
            if not turns or not any(m["content"].strip() for m in turns):
                raise PairError(f"the {name} response is empty")
            if turns[0]["role"] != "assistant":
                raise PairError(f"the {name} response starts with a {turns[0]['role']} turn, not an assistant turn")
        template = self.tokenizer.apply_chat_template
        prompt_text = template(prompt, tokenize=False, add_generation_prompt=True)
        full = [template(prompt + turns, tokenize=False) for turns in (chosen, rejected)]
        common = min(common_prefix_length(prompt_text, text) for text in full)
        prompt_text = prompt_text[:common]
        chosen_text, rejected_text = (text[common:] for text in full)
        if chosen_text == rejected_text:
            raise PairError("the chosen and rejected responses are identical")
        return prompt_text, chosen_text, rejected_text, True

    def encode(self, prompt: str, chosen: str, rejected: str, templated: bool) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, chosen response ids, rejected response ids) of one canonical pair, as
        `DPOTrainer._prepare_dataset`: prompt and prompt + response tokenized (special tokens added to text, not to
        templated text; EOS appended to text responses); the response starts where the two token lists first
        differ. The prompt then keeps its last task_options.max_prompt_length tokens (if set); responses are not
        cut here (`featurize` cuts each sequence to train.max_length)."""
        tok = self.tokenizer
        if not templated:
            chosen, rejected = (r if r.endswith(tok.eos_token) else r + tok.eos_token for r in (chosen, rejected))
        ids = tok([prompt, prompt + chosen, prompt + rejected], add_special_tokens=not templated)["input_ids"]
        start = min(common_prefix_length(ids[0], ids[1]), common_prefix_length(ids[0], ids[2]))
        prompt_ids = ids[0][:start]
        if self.options.max_prompt_length:
            prompt_ids = prompt_ids[-self.options.max_prompt_length:]
        return prompt_ids, ids[1][start:], ids[2][start:]

    def check_length(self, pair: tuple[str, str, str, bool]) -> None:
        """Refuse a canonical pair whose prompt leaves no response token within train.max_length.

        Raises:
            PairError: naming the prompt's tokens and the fix."""
        max_length = self.recipe.train.max_length
        prompt_tokens = len(self.encode(*pair)[0])
        if prompt_tokens >= max_length:
            fix = ("lower task_options.max_prompt_length below it" if self.options.max_prompt_length else
                   "set task_options.max_prompt_length (prompts keep their last tokens) below it")
            raise PairError(f"the prompt has {prompt_tokens} tokens, which fills train.max_length={max_length}, so "
                            f"no response token is left; raise train.max_length or {fix}")

    def setup(self, splits: dict[str, Dataset]) -> None:
        """Nothing to learn from the data (pairs are checked in `normalize`)."""

    # ---- model ------------------------------------------------------------------------------------
    def build_model(self, path: str):
        """The policy (as the clm task builds it); under full fine-tuning also the frozen reference: a copy of
        the starting weights, never trained or saved."""
        model = super().build_model(path)
        if not self.recipe.peft:
            self.reference_source = self.frozen(copy.deepcopy(model))
        return model

    @staticmethod
    def frozen(model):
        model.eval()
        model.requires_grad_(False)
        return model

    def reference_model_path(self) -> str:
        """Where the reference of a model the task did not build itself (`adapt eval` of a saved full fine-tuning
        run) loads from: task_options.reference_model, else the model the run was trained from (the `model` of
        the run folder's recipe.yaml).

        Raises:
            AdaptError: neither is known (a checkpoint not written by adapt)."""
        if self.options.reference_model:
            return assets.resolve_model_path(self.options.reference_model)
        saved = Path(self.recipe.model) / "recipe.yaml"
        if saved.exists():
            import yaml

            base = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("model")
            if base and Path(str(base)).resolve() != Path(self.recipe.model).resolve():
                return assets.resolve_model_path(str(base))
        raise AdaptError(f"{self.recipe.model}: DPO scores a model against its reference, and this folder does not say "
                         "which model it was trained from; set task_options.reference_model to it")

    def reference(self, policy):
        """The full-fine-tuning reference for `policy`: the starting weights (`reference_model_path` when the
        task did not build the policy) on the policy's device, in its dtype, with the speed layer's attention
        when the policy has it (so that reference and untrained policy compute the same numbers). One converted
        copy is kept; the source stays as loaded."""
        if self.reference_source is None:
            source = super().build_model(self.reference_model_path())
            self.reference_source = self.frozen(source)
        param = next(policy.parameters())
        key = (param.dtype, param.device)
        if self.reference_key != key:
            from adapt import speed

            ref = self.reference_source
            if next(ref.parameters()).dtype != param.dtype or next(ref.parameters()).device != param.device:
                ref = copy.deepcopy(ref).to(device=param.device, dtype=param.dtype)
            self.reference_copy = speed.prepare_model(ref, self, self.recipe.train)
            self.reference_key = key
        return self.reference_copy

    def card_details(self) -> dict[str, Any]:
        """Model-card rows: the objective and its settings."""
        reference = ("the base model with the adapter disabled" if self.recipe.peft
                     else f"frozen copy of {self.recipe.model}")
        return {"objective": "DPO (Rafailov et al. 2023), sigmoid loss", "beta": self.options.beta,
                "label smoothing": self.options.label_smoothing, "reference model": reference}

    # ---- features ---------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        """One row per pair: `input_ids` (prompt + chosen response), `rejected_input_ids` (prompt + rejected
        response), each cut to train.max_length from the right (TRL's `truncation_mode="keep_start"`),
        `prompt_length`, and `length` = 2 x the longer sequence (the padded tokens the pair takes in a batch)."""
        max_length = self.recipe.train.max_length
        rows: dict[str, list] = {"input_ids": [], "rejected_input_ids": [], "prompt_length": [], "length": []}
        pairs = zip(raw["prompt"], raw["chosen"], raw["rejected"], raw["templated"])
        for prompt_ids, chosen_ids, rejected_ids in (self.encode(*pair) for pair in pairs):
            chosen_seq = (prompt_ids + chosen_ids)[:max_length]
            rejected_seq = (prompt_ids + rejected_ids)[:max_length]
            rows["input_ids"].append(chosen_seq)
            rows["rejected_input_ids"].append(rejected_seq)
            rows["prompt_length"].append(len(prompt_ids))
            rows["length"].append(2 * max(len(chosen_seq), len(rejected_seq)))
        return Dataset.from_dict(rows)

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """A batch of B pairs as 2B right-padded rows, the B chosen sequences then the B rejected ones (TRL's
        concatenated batch): `input_ids`, `attention_mask` and `labels` [2B, length] (labels -100 on the prompt
        and padding)."""
        sequences = list(rows["input_ids"]) + list(rows["rejected_input_ids"])
        prompts = list(rows["prompt_length"]) * 2
        return pad_batch({"input_ids": sequences, "attention_mask": [[1] * len(s) for s in sequences],
                          "labels": [[-100] * p + list(s[p:]) for s, p in zip(sequences, prompts)]},
                         self.tokenizer.pad_token_id)

    # ---- loss and evaluation --------------------------------------------------------------------------
    def logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed response log-probabilities [2B] of the batch's rows under `model`."""
        return sequence_logps(forward(model, batch).logits, batch["labels"])

    def reference_logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[2B] under the reference: `model` with its adapter disabled (peft), else the frozen copy; no gradient."""
        with torch.no_grad():
            adapted = peft_model(model)
            if adapted is not None:
                with adapted.disable_adapter():
                    return self.logps(model, batch)
            return self.logps(self.reference(model), batch)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed per-pair DPO loss, pairs): chosen and rejected in one forward of the policy, one of the
        reference; the loop divides by the pairs of the global batch (TRL: the mean over pairs)."""
        policy = self.logps(model, batch)
        ref = self.reference_logps(model, batch)
        chosen, rejected = policy.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        losses = dpo_loss(chosen - ref_chosen, rejected - ref_rejected, self.options.beta, self.options.label_smoothing)
        return losses.sum(), torch.tensor(losses.numel())

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Pairs in a training batch (its rows are the chosen then the rejected sequences)."""
        return batch["input_ids"].shape[0] // 2

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        policy, ref = self.logps(model, batch).chunk(2), self.reference_logps(model, batch).chunk(2)
        return {"chosen_logps": policy[0], "rejected_logps": policy[1], "ref_chosen_logps": ref[0],
                "ref_rejected_logps": ref[1]}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        keys = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
        return [{k: float(o[k]) for k in keys} for o in outputs]

    def rewards(self, predictions: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) implicit rewards beta * (log pi - log pi_ref) [pairs], float64."""
        p = {k: torch.tensor([r[k] for r in predictions], dtype=torch.float64) for k in predictions[0]}
        beta = self.options.beta
        return beta * (p["chosen_logps"] - p["ref_chosen_logps"]), beta * (p["rejected_logps"] - p["ref_rejected_logps"])

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        """TRL's DPO evaluation metrics over the pairs: rewards/chosen and rewards/rejected (mean implicit
        rewards), rewards/accuracies (share of pairs whose chosen reward is strictly greater: a tie, as every pair
        of an untrained policy, counts as wrong, so chance is 0.5 only once rewards differ), rewards/margins (mean
        chosen - rejected reward), logps/chosen and logps/rejected (mean summed response log-probabilities,
        nats), loss (mean DPO loss, with the task's label smoothing) and pairs."""
        chosen, rejected = self.rewards(predictions)
        beta = self.options.beta
        losses = dpo_loss(chosen / beta, rejected / beta, beta, self.options.label_smoothing)
        return {"rewards/accuracies": float((chosen > rejected).double().mean()),
                "rewards/margins": float((chosen - rejected).mean()),
                "rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
                "logps/chosen": sum(r["chosen_logps"] for r in predictions) / len(predictions),
                "logps/rejected": sum(r["rejected_logps"] for r in predictions) / len(predictions),
                "loss": float(losses.mean()), "pairs": len(predictions)}

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        chosen, rejected = self.rewards(predictions)
        rows = []
        for row, p, c, r in zip(raw.to_list(), predictions, chosen.tolist(), rejected.tolist()):
            row.pop("templated", None)
            rows.append({**row, **p, "reward_chosen": c, "reward_rejected": r, "correct": c > r})
        return rows
