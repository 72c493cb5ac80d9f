"""adapt.conversation.render: a chat template's refusal is a ConversationError (one sentence); adapt's own
programming errors are not reported as the template refusing the conversation."""

from __future__ import annotations

import pytest
from conftest import smollm2_dir

from adapt.conversation import ConversationError, render, to_messages

STRICT_TEMPLATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
                   "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


def test_render_turns_a_template_refusal_into_one_sentence(tokenizer):
    tokenizer.chat_template = STRICT_TEMPLATE
    assert render(tokenizer, [{"role": "user", "content": "Hi"}]) == "user: Hi\n"
    with pytest.raises(ConversationError, match=r"^the tokenizer's chat template refuses it \(Conversation roles "
                                                r"must alternate user/assistant/user/assistant\)$"):
        render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi?"}])
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }"  # unclosed: jinja2 TemplateSyntaxError
    with pytest.raises(ConversationError, match="refuses it"):
        render(tokenizer, [{"role": "user", "content": "Hi"}])
    tokenizer.chat_template = None  # transformers' ValueError: no template
    with pytest.raises(ConversationError, match="refuses it \\(Cannot use chat template functions"):
        render(tokenizer, [{"role": "user", "content": "Hi"}])


def test_render_lets_a_programming_error_through(tokenizer):
    tokenizer.chat_template = STRICT_TEMPLATE
    with pytest.raises(TypeError, match="Chat messages should be dicts"):  # messages not made by to_messages
        render(tokenizer, ["Hi"])


def test_to_messages_roles_and_blank_turns_are_parameters():
    turns = [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": ""}]
    with pytest.raises(ConversationError, match="turn 2 has the unknown role 'tool'"):
        to_messages(turns)
    with pytest.raises(ConversationError, match="turn 2 is an empty tool turn"):
        to_messages(turns, roles=("user", "tool"))
    assert to_messages(turns, roles=("user", "tool"), allow_blank_turns=True) == turns
