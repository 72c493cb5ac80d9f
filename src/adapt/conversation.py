"""Conversations for chat fine-tuning: the standard data forms read into OpenAI-style messages, and the
character spans of the assistant turns in a chat template's rendering (the tokens that carry the loss).

Forms read (the conventions of TRL, FastChat and axolotl):
- OpenAI `messages`: a list of {"role": "system" | "user" | "assistant", "content": str};
- ShareGPT `conversations`: a list of {"from": "system" | "human" | "gpt", "value": str} (human -> user,
  gpt -> assistant, as FastChat's `train.py` and axolotl's sharegpt strategy map them);
- Anthropic HH-RLHF text: one string "\\n\\nHuman: ...\\n\\nAssistant: ..." (Bai et al. 2022), cut at its
  Human:/Assistant: markers into turns.

Every problem is a `ConversationError` holding one sentence (no file or row): the task that reads a file adds
where it is."""

from __future__ import annotations

import re
from typing import Any

ROLES = ("system", "user", "assistant")
# ShareGPT speaker names -> OpenAI roles (FastChat: human/gpt; many ShareGPT exports also write user/assistant)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
HH_ASSISTANT = "\n\nAssistant:"  # the marker an HH-RLHF prompt ends on (the model's turn follows)
HH_ROLES = {"Human": "user", "Assistant": "assistant"}

Messages = list[dict[str, str]]


class ConversationError(ValueError):
    """A conversation that cannot be used, with the reason as one sentence."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "a string", list: "a list", dict: "an object", bool: "true/false"}.get(type(value), "a number")


def to_messages(turns: Any, roles: tuple[str, ...] = ROLES, allow_blank_turns: bool = False) -> Messages:
    """OpenAI-style messages [{"role", "content"}] from a list of turns in OpenAI form ({"role", "content"}; the
    role one of `roles`) or ShareGPT form ({"from", "value"}; human -> user, gpt -> assistant); any other keys of a
    turn are dropped. The chat task reads conversations with the defaults; the DPO task its message lists with
    `roles` adding "tool" (TRL's conversational data) and `allow_blank_turns=True` (its pairs refuse an empty
    response where they are split).

    Raises:
        ConversationError: `turns` is not a list, or is empty; a turn is not an object, has neither role/content
            nor from/value, names an unknown role, or has content that is not text or (unless
            `allow_blank_turns`) is blank (turns are counted from 1).
    """
    if not isinstance(turns, list):
        raise ConversationError(f"the conversation is {_kind(turns)}, not a list of turns")
    if not turns:
        raise ConversationError("the conversation is empty (no turns)")
    messages = []
    for number, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ConversationError(f"turn {number} is {_kind(turn)}, not an object like "
                                    '{"role": "user", "content": "..."}')
        if turn.get("role") is not None or turn.get("content") is not None:
            role_key, content_key, names = "role", "content", {r: r for r in roles}
        elif turn.get("from") is not None or turn.get("value") is not None:
            role_key, content_key, names = "from", "value", SHAREGPT_ROLES
        else:
            keys = ", ".join(k for k, v in turn.items() if v is not None) or "none"
            raise ConversationError(f"turn {number} has neither role/content (OpenAI form) nor from/value "
                                    f"(ShareGPT form) (keys: {keys})")
        role = turn.get(role_key)
        if role not in names:
            raise ConversationError(f"turn {number} has the unknown {role_key} {role!r}; use one of "
                                    f"{', '.join(names)}")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise ConversationError(f"turn {number} ({role}): its {content_key} is {_kind(content)}, not text")
        if not content.strip() and not allow_blank_turns:
            raise ConversationError(f"turn {number} is an empty {names[role]} turn")
        messages.append({"role": names[role], "content": content})
    return messages


def parse_hh_dialogue(text: Any, allow_blank_turns: bool = False) -> Messages:
    """The turns of an HH-RLHF dialogue string "\\n\\nHuman: A\\n\\nAssistant: B..." as messages
    [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, ...], each content stripped of
    surrounding whitespace. A marker counts only at the start of a paragraph (after a blank line), as the data
    writes them, so "Human:" inside a turn stays text; the leading blank line may be missing. The one HH-RLHF
    parser of adapt: the chat task reads conversations with it, the DPO task (`allow_blank_turns=True`, its
    pairs refuse an empty response where they are split) the turns of chosen/rejected.

    Raises:
        ConversationError: not a string, no Human:/Assistant: turn, text before the first marker, or (unless
            `allow_blank_turns`) a blank turn (an empty assistant reply).
    """
    if not isinstance(text, str):
        raise ConversationError(f"the dialogue is {_kind(text)}, not a string of Human:/Assistant: turns")
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = HH_MARKER.split(text)
    if len(parts) == 1:
        raise ConversationError('the dialogue has no "\\n\\nHuman:" / "\\n\\nAssistant:" turns (HH-RLHF text form)')
    if parts[0].strip():
        raise ConversationError(f'the dialogue has text before its first "Human:" turn ({parts[0].strip()[:30]!r})')
    messages = []
    for number, (speaker, content) in enumerate(zip(parts[1::2], parts[2::2]), 1):
        if not content.strip() and not allow_blank_turns:
            raise ConversationError(f"turn {number} is an empty {HH_ROLES[speaker]} turn")
        messages.append({"role": HH_ROLES[speaker], "content": content.strip()})
    return messages


def check_ends_with_reply(messages: Messages) -> None:
    """Refuse a conversation to train or score on that does not end with an assistant reply.

    Raises:
        ConversationError: the last turn is not the assistant's.
    """
    if messages[-1]["role"] != "assistant":
        raise ConversationError(f"the conversation ends on a {messages[-1]['role']} turn; a conversation to train "
                                "or score on must end with an assistant reply")


def render(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> str:
    """`messages` rendered as text by the tokenizer's chat template.

    Raises:
        ConversationError: the template refuses the conversation: jinja2's TemplateError (a template's
            `raise_exception`, e.g. "roles must alternate user/assistant", and its syntax/undefined errors) or
            transformers' ValueError (no chat template set, an empty conversation). Other errors (e.g. transformers'
            TypeError for a message that is not a dict) are adapt's bugs and propagate.
    """
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (TemplateError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversationError(f"the tokenizer's chat template refuses it ({reason})") from None


def assistant_spans(tokenizer, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """(the whole conversation rendered by the chat template, [start, end) character spans of every assistant
    turn in it). A turn's span is what the template writes after the generation prompt that precedes it
    (`add_generation_prompt=True` on the turns before) up to the end of the conversation rendered through that
    turn: the reply's content and the template's end-of-turn token (e.g. "Hi<|im_end|>"), without trailing
    whitespace (the newline a template writes between turns is layout, not something the model says). These
    are the tokens a chat model generates, as in TRL's `assistant_only_loss` and the `{% generation %}` blocks
    of `return_assistant_tokens_mask`, found here for templates without such blocks.

    This needs a template whose renderings grow by appending: the conversation up to a reply with the
    generation prompt, and the conversation through that reply, must each be a prefix of the next; a template
    that rewrites earlier turns (e.g. strips earlier reasoning) is refused.

    Raises:
        ConversationError: the template refuses the conversation, or its renderings are not prefixes.
    """
    full = render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = render(tokenizer, messages[:index + 1])
        if not through.startswith(before) or not full.startswith(through):
            raise ConversationError(
                f"the tokenizer's chat template does not render turn {index + 1} (assistant) by appending to the "
                "turns before it, so its reply tokens cannot be found; set a chat template that only appends turns "
                "(the model folder's chat_template.jinja)")
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def target_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token (its character `offsets` [start, end) in the rendered text, from a fast tokenizer's
    `return_offsets_mapping`): whether it starts inside one of the assistant `spans`.

    Example: offsets [(0, 5), (5, 7), (7, 9)], spans [(5, 9)] -> [False, True, True]."""
    mask, spans = [], sorted(spans)
    k = 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        mask.append(k < len(spans) and spans[k][0] <= start < spans[k][1] and end > start)
    return mask
