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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import Field

from adapt import assets, conversation, data
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
    cut = chosen.rfind(HH_ASSISTANT, 0, common_prefix_length(chosen, rejected))
    if cut < 0:
        raise PairError("no prompt column, and chosen/rejected are not HH-RLHF dialogues that share an "
                        "'\\n\\nAssistant:' turn; give a prompt column, or chosen/rejected as HH-RLHF dialogues "
                        "('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def extract_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) of two conversations: the prompt is their longest common prefix of messages,
    the rest of each is its response (`trl.data_utils.extract_prompt` on message lists)."""
    index = common_prefix_length(chosen, rejected)
    return chosen[:index], chosen[index:], rejected[index:]


def check_messages(value: list, column: str) -> list[dict[str, str]]:
    """`value` (a list of turns) as {"role", "content"} messages (`adapt.conversation.to_messages`, with TRL's
    tool turns and blank turns allowed: an empty response is refused where the pair is split).

    Raises:
        PairError: naming `column` and the first bad message."""
    try:
        return conversation.to_messages(value, roles=MESSAGE_ROLES, allow_blank_turns=True)
    except ConversationError as err:
        raise PairError(f"'{column}' {err}") from None


def common_prefix_length(ids: Sequence, other: Sequence) -> int:
    """Leading items (tokens, characters, messages) `ids` and `other` share (`trl.data_utils.common_prefix_length`)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


# ---- loss ----------------------------------------------------------------------------------------------
def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of each row's target tokens: logits [rows, length, vocab] at position t score
    labels[t + 1]; labels -100 (prompt, padding) are left out. Only the target positions' logits are taken to
    float32 (not every position's [rows, length, vocab]). Returns [rows] float32."""
    targets = labels[:, 1:]
    mask = targets != -100
    nll = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none")  # [targets]
    logps = nll.new_zeros(mask.shape)
    logps[mask] = -nll
    return logps.sum(-1)


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
    """The peft model inside `model` (itself, or under DDP / torch.compile wrappers: accelerate's
    `extract_model_from_parallel`), or None."""
    from accelerate.utils import extract_model_from_parallel
    from peft import PeftModel

    unwrapped = extract_model_from_parallel(model, keep_torch_compile=False)
    return unwrapped if isinstance(unwrapped, PeftModel) else None


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
        self.ref_path: str | None = None  # full fine-tuning: where the starting weights load from (build_model)
        self.ref_model = None  # ... loaded, frozen, in the policy's dtype and on its device (TRL's `ref_model`)

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path):
        return Task.read_file(self, path)

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        raise AdaptError("a DPO run scores preference pairs: give `adapt eval` a file of pairs; to generate, use "
                         "the saved folder as a text-generation model (transformers pipeline, or a clm recipe)")

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Preference pairs in canonical columns: `prompt` (text ready to tokenize: a rendered chat prompt ends
        with the generation prompt), `chosen` and `rejected` (response text that follows it), `templated`
        (rendered by a chat template: no special tokens or EOS added), and their tokens `prompt_ids`, `chosen_ids`,
        `rejected_ids` (`encode`). Every row is checked here, with its line; task_options.drop_invalid_rows skips
        the rows that fail instead (a note names them).

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
        problems: dict[int, PairError] = {}  # row index -> what is wrong with it
        pairs: dict[int, tuple[str, str, str, bool]] = {}
        for index, row in enumerate(ds.select_columns(picked)):
            try:
                pairs[index] = self.canonical_pair(row.get(o.prompt_column) if has_prompt else None,
                                                   row[o.chosen_column], row[o.rejected_column], has_prompt)
            except PairError as err:
                problems[index] = err
        encoded = dict(zip(pairs, self.encode(list(pairs.values()))))
        max_length = self.recipe.train.max_length
        for index, (prompt_ids, _, _) in encoded.items():
            if len(prompt_ids) >= max_length:
                fix = ("lower task_options.max_prompt_length below it" if o.max_prompt_length else
                       "set task_options.max_prompt_length (prompts keep their last tokens) below it")
                problems[index] = PairError(f"the prompt has {len(prompt_ids)} tokens, which fills train.max_length="
                                            f"{max_length}, so no response token is left; raise train.max_length or {fix}")
        if problems and not o.drop_invalid_rows:
            index = min(problems)
            raise AdaptError(f"{source}: {data.row_location(source, index)}: {problems[index]} (fix or remove that "
                             "line, or set task_options.drop_invalid_rows=true to skip such pairs)")
        data.note_skipped_rows(source, sorted(problems), len(ds), "pairs")
        kept = [index for index in pairs if index not in problems]
        columns = ("prompt", "chosen", "rejected", "templated")
        out = {key: [pairs[index][k] for index in kept] for k, key in enumerate(columns)}
        out |= {key: [encoded[index][k] for index in kept] for k, key in enumerate(("prompt_ids", "chosen_ids",
                                                                                     "rejected_ids"))}
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
        if len({isinstance(value, list) for value in values.values()}) > 1:
            raise PairError("the pair mixes text and message lists; give prompt/chosen/rejected all as text or "
                            "all as message lists")
        if isinstance(chosen, list):
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
            PairError: no prompt turn, a prompt not ending on a user turn, an empty or non-assistant response, or
                a conversation the template refuses (`adapt.conversation.render`).
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
        try:
            prompt_text = conversation.render(self.tokenizer, prompt, add_generation_prompt=True)
            full = [conversation.render(self.tokenizer, prompt + turns) for turns in (chosen, rejected)]
        except ConversationError as err:
            raise PairError(str(err)) from None
        common = min(common_prefix_length(prompt_text, text) for text in full)
        prompt_text = prompt_text[:common]
        chosen_text, rejected_text = (text[common:] for text in full)
        if chosen_text == rejected_text:
            raise PairError("the chosen and rejected responses are identical")
        return prompt_text, chosen_text, rejected_text, True

    def encode(self, pairs: list[tuple[str, str, str, bool]]) -> list[tuple[list[int], list[int], list[int]]]:
        """(prompt ids, chosen response ids, rejected response ids) of each canonical pair (prompt, chosen,
        rejected, templated), as `DPOTrainer._prepare_dataset`: prompt and prompt + response tokenized (special
        tokens added to text, not to templated text; EOS appended to text responses); the response starts where
        the two token lists first differ. The prompt then keeps its last task_options.max_prompt_length tokens (if
        set); responses are not cut here (`featurize` cuts each sequence to train.max_length). One batched
        tokenizer call for the text pairs and one for the templated ones."""
        tok = self.tokenizer
        texts: dict[bool, list[str]] = {False: [], True: []}
        for prompt, chosen, rejected, templated in pairs:
            if not templated:
                chosen, rejected = (r if r.endswith(tok.eos_token) else r + tok.eos_token for r in (chosen, rejected))
            texts[templated] += [prompt, prompt + chosen, prompt + rejected]
        ids = {templated: iter(tok(batch, add_special_tokens=not templated)["input_ids"])
               for templated, batch in texts.items() if batch}
        out = []
        for *_, templated in pairs:
            prompt, with_chosen, with_rejected = (next(ids[templated]) for _ in range(3))
            start = min(common_prefix_length(prompt, with_chosen), common_prefix_length(prompt, with_rejected))
            prompt_ids = prompt[:start]
            if self.options.max_prompt_length:
                prompt_ids = prompt_ids[-self.options.max_prompt_length:]
            out.append((prompt_ids, with_chosen[start:], with_rejected[start:]))
        return out

    def setup(self, splits: dict[str, Dataset]) -> None:
        """Nothing to learn from the data (pairs are checked in `normalize`)."""

    # ---- model ------------------------------------------------------------------------------------
    def build_model(self, path: str):
        """The policy (as the clm task builds it); under full fine-tuning `path` is also where the frozen
        reference loads from (`reference`: the starting weights, never trained or saved)."""
        if not self.recipe.peft:
            self.ref_path = path
        return super().build_model(path)

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
        """The full-fine-tuning reference for `policy`: the starting weights (from `build_model`'s path, else
        `reference_model_path` when the task did not build the policy), frozen, with the speed layer's attention
        (as the policy: the reference and the untrained policy compute the same numbers), moved in place to the
        policy's device and dtype. One copy is kept; it is loaded again (the old one dropped first) when the
        policy's dtype changes (a bf16 run's policy is scored in fp32 at the end), so that the reference is never
        rounded twice."""
        from adapt import speed

        param = next(policy.parameters())
        ref = self.ref_model
        if ref is None or next(ref.parameters()).dtype != param.dtype:
            self.ref_model = ref = None  # the old copy goes before the new one loads
            ref = self.frozen(super().build_model(self.ref_path or self.reference_model_path())).to(param.dtype)
            self.ref_model = ref = speed.prepare_model(ref, self, self.recipe.train)
        if next(ref.parameters()).device != param.device:
            ref.to(param.device)
        return ref

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
        for prompt_ids, chosen_ids, rejected_ids in zip(raw["prompt_ids"], raw["chosen_ids"], raw["rejected_ids"]):
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
            for key in ("templated", "prompt_ids", "chosen_ids", "rejected_ids"):
                row.pop(key, None)
            rows.append({**row, **p, "reward_chosen": c, "reward_rejected": r, "correct": c > r})
        return rows
