"""Task registry: a recipe's `task:` name -> the module implementing it."""

from __future__ import annotations

import importlib

from adapt.errors import AdaptError

# name -> "module:Class", imported lazily so one task's heavy imports never slow another's start-up
TASKS = {
    "classification": "adapt.tasks.classification:SequenceClassification",
    "qa": "adapt.tasks.question_answering:QuestionAnswering",
    "ner": "adapt.tasks.token_classification:TokenClassification",
    "clm": "adapt.tasks.causal_lm:CausalLM",
    "chat": "adapt.tasks.chat:Chat",
    "seq2seq": "adapt.tasks.seq2seq:Seq2Seq",
    "mlm": "adapt.tasks.masked_lm:MaskedLM",
    "dpo": "adapt.tasks.preference:DPO",
}


def task_class(name: str):
    """The Task subclass registered as `name`."""
    if name not in TASKS:
        raise AdaptError(f"recipe task '{name}' is unknown; tasks are: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_task(recipe):
    return task_class(recipe.task)(recipe)
