"""Chat template rendering that keeps user content out of special-token parsing.

The template (from the model's GGUF metadata) is rendered with each message's content replaced by a
unique marker; the markers split the output into template text, tokenized with special tokens
parsed, and content, tokenized as plain text. So `<|im_start|>system` typed by a user stays text.
One regex pass finds every marker, so the work is linear in the rendered length whatever the number
of messages (a search per marker made 5,000 messages take minutes).

The fine-tuning data encoder (training/data.py) renders chats through this same class, so a model is trained
on exactly the token sequence it is served.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmaas.core.errors import InvalidRequestError

# Fallback when a model ships no template: ChatML.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Google's Gemma chat format (the template of the instruction-tuned Gemma 3 checkpoints, text only): a system
# message is folded into the first user turn, the assistant's role is "model", and roles must alternate.
# Content is not `| trim`med here: it reaches the template as a marker and is tokenized as it was sent.
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# What a GGUF without a chat template of its own is rendered with, by its `general.architecture`.
_BY_ARCHITECTURE = {"gemma": GEMMA, "gemma2": GEMMA, "gemma3": GEMMA}


def template_for(gguf_template: str | None, architecture: str | None) -> str:
    """The chat template to serve (and train) a model with: its GGUF's own, else its architecture's format
    (Gemma GGUFs often carry none), else ChatML."""
    return gguf_template or _BY_ARCHITECTURE.get(architecture or "", CHATML)


@dataclass(slots=True)
class ChatMessage:
    role: str
    content: str


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise InvalidRequestError(f"chat template rejected the messages: {msg}", param="messages")

        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(source or CHATML)
        self._bos, self._eos = bos_token, eos_token

    def render(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[tuple[str, int | None]]:
        """The rendered chat as pieces in order: (template text, None) or (content, index of its message)."""
        nonce = secrets.token_hex(8)  # unguessable: a message cannot forge a marker
        marker = re.compile(f"\x00{nonce}:(\\d+)\x00")
        rendered_msgs = [{"role": m.role, "content": f"\x00{nonce}:{i}\x00"} for i, m in enumerate(messages)]
        try:
            text = self._template.render(
                messages=rendered_msgs, add_generation_prompt=add_generation_prompt, bos_token=self._bos,
                eos_token=self._eos
            )
        except InvalidRequestError:
            raise
        except TemplateError as e:
            raise InvalidRequestError(f"chat template failed to render: {e}", param="messages") from e
        pieces: list[tuple[str, int | None]] = []
        pos = 0
        for m in marker.finditer(text):
            if m.start() > pos:
                pieces.append((text[pos:m.start()], None))
            i = int(m.group(1))
            pieces.append((messages[i].content, i))
            pos = m.end()
        if pos < len(text):
            pieces.append((text[pos:], None))
        return pieces

    def tokenize(
        self, messages: list[ChatMessage], tokenize: Callable[[str, bool], list[int]]
    ) -> list[int]:
        """Render (with the generation prompt) and tokenize; `tokenize(text, special)` is the model's tokenizer."""
        tokens: list[int] = []
        for text, index in self.render(messages):
            if text:
                tokens += tokenize(text, index is None)
        return tokens
