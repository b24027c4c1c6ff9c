"""Chat template rendering that keeps user content out of special-token parsing.

The template (from the model's GGUF metadata) is rendered with each message's content replaced by a
unique marker; the markers split the output into template text, tokenized with special tokens
parsed, and content, tokenized as plain text. So `<|im_start|>system` typed by a user stays text.
One regex pass finds every marker, so the work is linear in the rendered length whatever the number
of messages (a search per marker made 5,000 messages take minutes).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmaas.core.errors import InvalidRequestError

# Fallback when a model ships no template: ChatML.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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

    def tokenize(
        self, messages: list[ChatMessage], tokenize: Callable[[str, bool], list[int]]
    ) -> list[int]:
        """Render and tokenize; `tokenize(text, special)` is the model's tokenizer."""
        nonce = secrets.token_hex(8)  # unguessable: a message cannot forge a marker
        marker = re.compile(f"\x00{nonce}:(\\d+)\x00")
        rendered_msgs = [{"role": m.role, "content": f"\x00{nonce}:{i}\x00"} for i, m in enumerate(messages)]
        try:
            text = self._template.render(
                messages=rendered_msgs, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos
            )
        except InvalidRequestError:
            raise
        except TemplateError as e:
            raise InvalidRequestError(f"chat template failed to render: {e}", param="messages") from e
        tokens: list[int] = []
        pos = 0
        for m in marker.finditer(text):
            if m.start() > pos:
                tokens += tokenize(text[pos:m.start()], True)
            content = messages[int(m.group(1))].content
            if content:
                tokens += tokenize(content, False)
            pos = m.end()
        if pos < len(text):
            tokens += tokenize(text[pos:], True)
        return tokens
