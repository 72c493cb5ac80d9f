"""Multi-turn chat fine-tuning: conversations (OpenAI `messages`, ShareGPT `conversations`, or HH-RLHF
"Human:/Assistant:" text) rendered with the tokenizer's chat template, the loss on every assistant turn only
(its reply and the template's end-of-turn token), everything else -100. One conversation is one example; the
speed layer's padding-free path packs a batch of them into one row with positions restarting per conversation,
so no conversation attends to another. Scoring, perplexity and generation are the causal LM task's
(`adapt.tasks.causal_lm.CausalLM`): validation perplexity is over assistant tokens, and the generation metrics
compare the reply generated for each conversation's last user turn with its last assistant turn."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from datasets import Dataset
from pydantic import Field, create_model

from adapt import data
from adapt.conversation import (ConversationError, assistant_spans, check_ends_with_reply,
                                parse_hh_dialogue, render, target_mask, to_messages)
from adapt.errors import AdaptError
from adapt.tasks.base import Task, TaskOptions, json_input
from adapt.tasks.causal_lm import CausalLM, CausalLMOptions

# the causal LM options that describe plain-text or prompt/completion data, which conversations do not have
NOT_FOR_CHAT = ("block_size", "passage_chars", "prompt_column", "completion_column", "chat_template",
                "prompt_template", "source_lang")
# columns read when task_options.messages_column is not set, in this order; then data.columns.text, then `chosen`
MESSAGE_COLUMNS = ("messages", "conversations")
HH_COLUMN = "chosen"

ChatOptions = create_model(
    "ChatOptions", __base__=TaskOptions,
    messages_column=(str | None, Field(None, description="column holding each conversation as a list of turns "
                                                         "(OpenAI role/content or ShareGPT from/value); default: "
                                                         "messages, else conversations")),
    drop_invalid_rows=(bool, Field(False, description="skip conversations that cannot train (empty turns, unknown "
                                                      "roles, no final reply, refused by the template), with a note "
                                                      "counting them, instead of stopping at the first")),
    # decoding and generation metrics, as the causal LM task has them
    **{name: (field.annotation, field) for name, field in CausalLMOptions.model_fields.items()
       if name not in NOT_FOR_CHAT},
)


class Chat(CausalLM):
    name = "chat"
    Options = ChatOptions

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path):
        """Conversations are tables (JSON list, JSON Lines, Parquet; CSV for HH-RLHF text): one per row."""
        return Task.read_file(self, path)  # a table, read with data.delimiter / data.header_names

    def conversation_column(self, columns: list[str], first_row: dict | None = None) -> tuple[str, str] | None:
        """(column, "turns" | "hh") that holds the conversations among `columns`, or None: task_options.
        messages_column (HH-RLHF text when `first_row` holds a string there, else lists of turns), else the
        first of `messages`/`conversations`, else data.columns.text or `chosen` as HH-RLHF dialogue text."""
        chosen = self.options.messages_column
        if chosen:
            if chosen not in columns:
                return None
            return chosen, "hh" if isinstance((first_row or {}).get(chosen), str) else "turns"
        for name in MESSAGE_COLUMNS:
            if name in columns:
                return name, "turns"
        for name in (self.recipe.data.columns.text, HH_COLUMN):
            if name in columns:
                return name, "hh"
        return None

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Columns `messages` (OpenAI form: [{"role", "content"}]), `text`, the conversation as the chat
        template renders it, and `spans`, the [start, end) character spans of its assistant turns in `text`
        (`assistant_spans`; the last one is the final reply, so `text[:spans[-1][0]]` is the conversation before
        it with the generation prompt). Every conversation is checked here, where its row is known: turns,
        roles, no blank turn, a final assistant reply, and a template that renders it by appending turns.

        Raises:
            AdaptError: "<file>: line N: <reason>; <fix>" for the first conversation that cannot train (with
                task_options.drop_invalid_rows those rows are skipped and counted in a note instead), or no
                column of conversations."""
        found = self.conversation_column(ds.column_names, ds[0] if len(ds) else None)
        if found is None:
            wanted = (f"'{self.options.messages_column}'" if self.options.messages_column else
                      f"'messages' or 'conversations' (lists of turns), or '{self.recipe.data.columns.text}' or "
                      f"'{HH_COLUMN}' (HH-RLHF Human:/Assistant: text)")
            raise AdaptError(f"{source}: no column {wanted} (columns: {', '.join(ds.column_names)}); name the "
                             "column of conversations with --set task_options.messages_column=NAME")
        column, form = found
        parse = to_messages if form == "turns" else parse_hh_dialogue
        conversations, texts, all_spans, dropped = [], [], [], []
        for row, value in enumerate(ds[column][:]):
            try:
                messages = parse(value)
                check_ends_with_reply(messages)
                text, spans = assistant_spans(self.tokenizer, messages)
                if not spans or spans[-1][1] != len(text.rstrip()):
                    raise ConversationError("the tokenizer's chat template writes nothing for the final assistant "
                                            "reply; set a chat template that renders assistant turns")
            except ConversationError as err:
                if not self.options.drop_invalid_rows:
                    raise AdaptError(f"{source}: {data.row_location(source, row)}: {err} (column '{column}'); fix "
                                     "or remove that conversation (or skip such rows: --set "
                                     "task_options.drop_invalid_rows=true)") from None
                dropped.append((row, str(err)))
                continue
            conversations.append(messages)
            texts.append(text)
            all_spans.append([list(span) for span in spans])
        data.note_skipped_rows(source, [row for row, _ in dropped], len(ds), "conversations",
                               dropped[0][1] if dropped else None)
        return Dataset.from_dict({"messages": conversations, "text": texts, "spans": all_spans})

    def setup(self, splits: dict[str, Dataset]) -> None:
        self.check_generation(splits["validation"])

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Conversations for `adapt predict`, each answered with the next assistant reply: a plain line is one
        user turn; a JSON object (a line of a JSON Lines `--file`) gives its conversation column (as the data
        files: messages/conversations, or HH text). A conversation that ends with an assistant reply is answered
        anew from the turns before it.

        Raises:
            AdaptError: "input N: <reason>" for an unusable conversation."""
        conversations = []
        for number, text in enumerate(texts, 1):
            item = json_input(text)
            try:
                if item is None:
                    messages = to_messages([{"role": "user", "content": text}])
                else:
                    found = self.conversation_column(list(item), item)
                    if found is None:
                        raise ConversationError(f"the JSON object has no conversation column (keys: "
                                                f"{', '.join(map(str, item)) or 'none'}); name it with --set "
                                                "task_options.messages_column=KEY")
                    column, form = found
                    messages = (to_messages if form == "turns" else parse_hh_dialogue)(item[column])
                if messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
                if not messages:
                    raise ConversationError("the conversation has no turn before its assistant reply")
                render(self.tokenizer, messages, add_generation_prompt=True)
            except ConversationError as err:
                raise AdaptError(f"input {number}: {err}") from None
            conversations.append(messages)
        return Dataset.from_dict({"messages": conversations})

    # ---- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, path: str):
        """The causal LM tokenizer, which must carry a chat template and compute character offsets (a fast
        tokenizer), since the assistant tokens are found by the characters they cover.

        Raises:
            AdaptError: the tokenizer has no chat template, or is not a fast tokenizer."""
        tokenizer = super().load_tokenizer(path)
        if not tokenizer.chat_template:
            raise AdaptError(f"the tokenizer of {path} has no chat template, which task chat renders conversations "
                             "with; use a chat model (e.g. embedded:smollm2), or a tokenizer folder with a "
                             "chat_template.jinja (recipe key `tokenizer`)")
        if not tokenizer.is_fast:
            raise AdaptError(f"the tokenizer of {path} is a slow (Python) tokenizer without character offsets, which "
                             "task chat needs to find the assistant tokens; use its fast (tokenizer.json) version")
        return tokenizer

    # ---- features -------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        """Training and scoring rows from the `normalize`d conversations: `input_ids` (`text` tokenized, cut to
        train.max_length from the right), `attention_mask`, `labels` (the ids of the tokens that start inside
        an assistant span of `spans`, -100 elsewhere), `length`, `example`; validation/test rows also get the
        prompts the generation metrics answer (`add_generation_prompts`: the conversation before its final
        reply, with the generation prompt). For `adapt predict` (role "predict"): the conversation with the
        generation prompt, its last train.max_length tokens, no labels."""
        if role == "predict":
            return self.featurize_prompts(raw)
        max_length = self.recipe.train.max_length
        rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "example": []}
        no_target = 0
        texts, all_spans = list(raw["text"]), list(raw["spans"])
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for index, spans in enumerate(all_spans):
            ids = encoded["input_ids"][index][:max_length]
            mask = target_mask(encoded["offset_mapping"][index], [tuple(span) for span in spans])[:max_length]
            labels = [t if m else -100 for t, m in zip(ids, mask)]
            no_target += not any(mask[1:])  # the first token is never predicted
            rows["input_ids"].append(ids)
            rows["attention_mask"].append([1] * len(ids))
            rows["labels"].append(labels)
            rows["length"].append(len(ids))
            rows["example"].append(index)
        if no_target:
            print(f"note: {no_target} of {len(raw)} {role} conversations have no assistant token within "
                  f"train.max_length={max_length} and add nothing to the loss; raise train.max_length",
                  file=sys.stderr)
        features = Dataset.from_dict(rows)
        if role != "train" and self.generation_enabled(raw):
            count = self.generation_count(len(texts), role)
            prompts = [text[:spans[-1][0]] for text, spans in zip(texts[:count], all_spans)]
            features = self.add_generation_prompts(features, self.prompt_token_ids(prompts))
        return features

    def featurize_prompts(self, raw: Dataset) -> Dataset:
        """Each conversation with the template's generation prompt, its last train.max_length tokens."""
        max_length = self.recipe.train.max_length
        prompts = [render(self.tokenizer, m, add_generation_prompt=True) for m in raw["messages"]]
        ids = [list(p)[-max_length:] for p in self.prompt_token_ids(prompts)]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                                  "length": [len(i) for i in ids], "example": list(range(len(ids)))})

    def featurize_key(self) -> list[str]:
        template = self.tokenizer.chat_template if self.tokenizer is not None else ""
        return [*super().featurize_key(), "chat-template=" + hashlib.sha256(str(template).encode()).hexdigest()]

    def prompt_token_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of prompts rendered by the chat template, which writes its own special tokens."""
        return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]

    generation_columns = ("messages", "text", "spans")  # normalized conversations (`normalize`)

    def references(self, raw: Dataset) -> list[str]:
        """Each conversation's final assistant reply, which the reply generated for the turns before it is
        scored against."""
        return [messages[-1]["content"] for messages in raw["messages"]]

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        """Per conversation: its messages, NLL and tokens of its assistant turns, perplexity, and the generated
        reply where one was generated (the rendered text and its spans are left out)."""
        rows = super().example_predictions(predictions, raw)
        for row in rows:
            row.pop("text", None)
            row.pop("spans", None)
        return rows

