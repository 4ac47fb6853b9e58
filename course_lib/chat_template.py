"""Chat templates: from a list of messages to the exact text an instruct model was trained on.

An instruct model (``HuggingFaceTB/SmolLM2-135M-Instruct``, ``Qwen/Qwen2.5-0.5B-Instruct``,
``Qwen/Qwen3-0.6B``) only answers well when the conversation is written in the format it
was fine-tuned on, special tokens and newlines included::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    What is RoPE?<|im_end|>
    <|im_start|>assistant

Each checkpoint ships that format as a small **Jinja** program, the *chat template*: the
``"chat_template"`` field of ``tokenizer_config.json``, or (newer repositories) a file
``chat_template.jinja`` / ``chat_template.json`` beside it. ``apply_chat_template`` renders it
exactly as ``transformers`` does (same Jinja settings, same helpers), so the course and
``transformers`` give the same string for the same messages; ``encode_chat`` turns that string
into token ids without adding special tokens a second time (the template already wrote them).

A base model (``HuggingFaceTB/SmolLM2-135M``, ``Qwen/Qwen2.5-0.5B``) usually has no template:
it continues plain text, so give it plain text.

Example (online, or with the files in the Hub cache: ``python -m course_lib.download
HuggingFaceTB/SmolLM2-135M-Instruct``)::

    from course_lib import load_model, load_tokenizer
    from course_lib.chat_template import apply_chat_template, encode_chat

    def chat(model_id, question, max_new_tokens=40):
        model, tok = load_model(model_id), load_tokenizer(model_id)
        messages = [{"role": "user", "content": question}]
        text = apply_chat_template(messages, tokenizer_folder=tok)   # the template and special tokens
        ids = encode_chat(tok, text)                                  # (1, T), nothing added twice
        out = model.generate(ids, max_new_tokens)                     # stops at the model's eos token
        return tok.decode(out[0, ids.shape[1]:].tolist())

    print(chat("HuggingFaceTB/SmolLM2-135M-Instruct", "What is the capital of France?"))

Templates from the Hub are code written by strangers: they run in Jinja's immutable sandbox
(no file or attribute access beyond plain data), as in ``transformers``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

# Where a repository keeps its template, in the order transformers prefers them.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")
# The named special tokens a template sees as variables (transformers' SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names a message's reasoning comes under; transformers copies one to the others before rendering.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
JINJA_MINIMUM = (3, 1, 6)  # older versions have known sandbox escapes (transformers refuses them too)
JINJA_FIX = 'pip install "jinja2>=3.1.6"  (it comes with JupyterLab; conda: conda install "jinja2>=3.1.6")'

_NOT_GIVEN = object()


class ChatTemplateError(ValueError):
    """No template, an unreadable one, or a template that refused the messages; the message says what to do."""


# ----------------------------------------------------------------------------- reading the template

def _folder_of(src) -> Path:
    """A folder from ``src``: a tokenizer from ``load_tokenizer``, a folder, a course asset or a Hub id."""
    folder = getattr(src, "source_folder", None)
    if folder is not None:  # a tokenizers.Tokenizer that load_tokenizer made
        return Path(folder)
    if hasattr(src, "encode") and hasattr(src, "decode"):
        raise TypeError(f"this {type(src).__name__} does not say which folder it came from, so its chat template "
                        f"cannot be found: pass the model's folder or Hub id (tokenizer_folder='org/name'), or "
                        f"load the tokenizer with course_lib.load_tokenizer(src)")
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"tokenizer_folder must be a folder, a Hub model id or a tokenizer from load_tokenizer, "
                        f"got {type(src).__name__} ({src!r:.60})")
    from course_lib.hub import TOKENIZER_FILES, resolve_source

    return resolve_source(src, filenames=["config.json", *TOKENIZER_FILES])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ChatTemplateError(f"{path} is not valid JSON ({err}): download it again") from err


def _pick(templates, path: Path, name: str | None, tools) -> str:
    """A template string from a config value: a string, or a list of ``{"name", "template"}`` (named templates)."""
    if isinstance(templates, str):
        return templates
    if isinstance(templates, list) and all(isinstance(t, dict) and {"name", "template"} <= t.keys()
                                           for t in templates):
        named = {t["name"]: t["template"] for t in templates}
        wanted = name or ("tool_use" if tools and "tool_use" in named else "default")
        if wanted not in named:
            raise ChatTemplateError(f"{path} has the chat templates {', '.join(map(repr, named))} but none named "
                                    f"{wanted!r}: pass template_name= one of them")
        return named[wanted]
    raise ChatTemplateError(f"{path}: 'chat_template' must be a string (or a list of {{'name', 'template'}}), "
                            f"found {type(templates).__name__}; download the file again")


def read_chat_template(src, name: str | None = None, tools=None) -> str:
    """The chat template of ``src`` (a folder, a Hub id, or a tokenizer from ``load_tokenizer``).

    Looks in ``chat_template.jinja`` (the template as it is), ``chat_template.json``
    (``{"chat_template": ...}``) and ``tokenizer_config.json`` (``"chat_template"``), in that
    order, as ``transformers`` does. A repository with several named templates picks ``name``,
    else ``"tool_use"`` when ``tools`` are given and it has one, else ``"default"``.
    Raises ``ChatTemplateError`` when there is none (a base model).
    """
    folder = _folder_of(src)
    for filename in TEMPLATE_FILES:
        path = folder / filename
        if not path.is_file():
            continue
        if filename.endswith(".jinja"):
            return path.read_text(encoding="utf-8")
        values = _read_json(path)
        if isinstance(values, dict) and values.get("chat_template") is not None:
            return _pick(values["chat_template"], path, name, tools)
    looked = ", ".join(TEMPLATE_FILES)
    raise ChatTemplateError(
        f"{folder} has no chat template: none of {looked} holds one. "
        f"A base model has none: it continues plain text, so pass it plain text (generate(model, tok, "
        f"'The capital of France is')); for chat, use the -Instruct model (e.g. HuggingFaceTB/SmolLM2-135M-Instruct, "
        f"Qwen/Qwen2.5-0.5B-Instruct), or pass chat_template= yourself")


def _token_content(value) -> str | None:
    """A special-token setting as its text: a string, or transformers' AddedToken dict ``{"content": ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_special_tokens(src) -> dict[str, str]:
    """The named special tokens of ``src`` as strings: ``{"bos_token": "<|im_start|>", "eos_token": ...}``.

    From ``tokenizer_config.json``, overridden by ``special_tokens_map.json`` (as transformers reads
    them); tokens set to ``null`` (Qwen's bos_token) are left out, so a template sees them undefined.
    These are the variables ``transformers`` passes to a chat template.
    """
    from course_lib.tokenizer_loading import read_tokenizer_settings

    settings = read_tokenizer_settings(_folder_of(src))  # the overlay load_tokenizer uses too
    tokens = {name: _token_content(settings.get(name)) for name in SPECIAL_TOKEN_NAMES}
    return {name: text for name, text in tokens.items() if text is not None}


# ----------------------------------------------------------------------------- rendering

def _jinja2():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError as err:
        raise ImportError(f"chat templates are Jinja programs and need the jinja2 package, which is not installed: "
                          f"{JINJA_FIX}") from err
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < JINJA_MINIMUM:
        raise ImportError(f"jinja2 {jinja2.__version__} is too old to run chat templates safely (versions before "
                          f"3.1.6 have known sandbox escapes, and a template from the Hub is untrusted code): "
                          f"{JINJA_FIX}")
    return jinja2


@lru_cache(maxsize=32)
def compile_chat_template(template: str):
    """``template`` compiled as ``transformers`` compiles it (cached: the same string compiles once).

    Jinja's ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks`` (a block
    tag's own line break and indentation are not output) and the ``loopcontrols`` extension
    (``{% break %}``, ``{% continue %}``); plus the helpers templates call: ``raise_exception(msg)``,
    ``strftime_now(fmt)`` (today's date), ``tojson`` without HTML escaping and with ``indent=``,
    ``dict(...)``, a ``namespace`` that refuses ``_private`` names, and ``{% generation %}``
    (transformers marks the assistant's tokens with it; here it only renders its body).
    """
    jinja2 = _jinja2()
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationBlock(Extension):
        """``{% generation %} ... {% endgeneration %}``: renders the body unchanged."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes <, >, & and ' for HTML: a prompt must keep them as they are
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # Jinja's own signature trick: namespace(self=...) works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for key in attrs:
                TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, key, value):
            TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check_name(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not store the underscore-prefixed "
                                                      f"attribute {key!r} on a namespace")

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ChatTemplateError(f"the chat template is not valid Jinja (line {err.lineno}: {err.message}); "
                                f"download the tokenizer files again, or fix the template you passed") from err


def _plain(value, where: str):
    """``value`` as plain JSON-like data (what a template may see): str, numbers, bools, None, lists, dicts."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, int, float):  # subclasses (enums, NumPy scalars) carry methods: keep the plain value
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item(), where)  # a NumPy / torch scalar
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):  # a tuple stays a tuple, as in transformers
        return tuple(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}: a chat template sees only text, numbers, lists and "
                    f"dicts; convert it first (e.g. str(...) or .tolist())")


def check_messages(messages) -> list[dict]:
    """``messages`` as a fresh list of plain dicts, or a clear ``TypeError``/``ValueError``.

    Each message is ``{"role": str, "content": str}`` (content may also be a list of content
    blocks, or be left out / ``None`` on an assistant message that has ``"tool_calls"``).
    Keys set to ``None`` are dropped, as transformers does (APIs return ``content=None``).
    """
    example = '[{"role": "user", "content": "Hello!"}]'
    if isinstance(messages, (str, bytes)) or isinstance(messages, Mapping) or not isinstance(messages, Sequence):
        what = f"a {type(messages).__name__}"
        hint = (" (one message: wrap it in a list)" if isinstance(messages, Mapping) else
                " (plain text: a base model reads it as it is; for a chat, make it a user message)"
                if isinstance(messages, str) else "")
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {what}{hint}: "
                        f"e.g. {example}")
    if len(messages) == 0:
        raise ValueError(f"messages is empty: a chat template needs at least one message, e.g. {example}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] is a {type(message).__name__} ({message!r:.60}), not a dict: each message "
                            f"is {{'role': 'user', 'content': 'text'}}")
        message = {k: v for k, v in message.items() if v is not None}
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}] has no 'role' (keys: {', '.join(map(repr, message)) or 'none'}): give "
                             f"each message a role, 'system', 'user', 'assistant' or 'tool'")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise ValueError(f"messages[{i}] (role {role!r}) has no 'content': give it the text, e.g. "
                             f"{{'role': {role!r}, 'content': '...'}}")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise TypeError(f"messages[{i}]['content'] is a {type(content).__name__} ({content!r:.60}): it must be "
                            f"text (a str), or a list of content blocks")
        out.append(_plain(message, f"messages[{i}]"))
    return out


def _alias_reasoning(message: dict) -> dict:
    """transformers copies a message's reasoning to every name templates read it under: the same here."""
    reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = True, tools=None,
                         documents=None, **variables) -> str:
    """Render ``template`` (a Jinja string) for ``messages`` with ``variables`` (special tokens, switches).

    The low-level step of ``apply_chat_template``: nothing is read from disk here.
    A template that calls ``raise_exception(...)`` (it refuses the messages, e.g. roles that do not
    alternate) raises ``ChatTemplateError`` with the template's own message.
    """
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(f"chat_template must be a non-empty string of Jinja, got {template!r:.60}")
    compiled = compile_chat_template(template)
    jinja2 = _jinja2()
    chat = [_alias_reasoning(m) for m in check_messages(messages)]
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
            raise TypeError("tools must be a list of JSON-schema dicts, e.g. [{'type': 'function', 'function': "
                            "{'name': 'get_weather', 'description': ..., 'parameters': {...}}}]")
        tools = _plain(tools, "tools")
    if documents is not None:
        documents = _plain(documents, "documents")
    variables = {k: _plain(v, k) for k, v in variables.items()}
    try:
        return compiled.render(messages=chat, tools=tools, documents=documents,
                               add_generation_prompt=bool(add_generation_prompt), **variables)
    except jinja2.exceptions.SecurityError as err:
        raise ChatTemplateError(f"the chat template tried something the sandbox forbids ({err}): it is not a "
                                f"template to trust; use the model's published one") from err
    except jinja2.exceptions.TemplateError as err:  # raise_exception(...) in the template, or undefined misuse
        raise ChatTemplateError(f"the chat template refused these messages: {err}") from err
    except Exception as err:  # e.g. 'text' + a list: the template expects other messages than these
        raise ChatTemplateError(f"the chat template failed on these messages ({type(err).__name__}: {err}); check "
                                f"that each message has the fields this template reads (content as text for most "
                                f"templates)") from err


def apply_chat_template(messages, chat_template: str | None = None, *, tokenizer_folder=None,
                        add_generation_prompt: bool = True, bos_token=_NOT_GIVEN, eos_token=_NOT_GIVEN,
                        tools=None, documents=None, template_name: str | None = None, **extra) -> str:
    """The text of a conversation in the model's own chat format, as ``transformers`` renders it.

    ``messages``: ``[{"role": "system" | "user" | "assistant" | "tool", "content": str}, ...]``.
    ``chat_template``: the Jinja template; default: the one of ``tokenizer_folder``.
    ``tokenizer_folder``: where the template and the special tokens come from: a folder, a Hub
    id, or a tokenizer from ``load_tokenizer`` (it remembers its folder).
    ``add_generation_prompt``: end with the opening of an assistant turn (``<|im_start|>assistant\\n``),
    so the model writes the answer next. Default ``True`` here (for generating); transformers'
    default is ``False`` (for writing out whole training conversations).
    ``bos_token`` / ``eos_token``: the strings the template sees as ``bos_token`` / ``eos_token``;
    default: the folder's (``read_special_tokens``: all seven named special tokens). Pass ``None``
    to leave one undefined.
    ``tools``: JSON schemas of functions the model may call (templates that support tools list them).
    ``template_name``: for repositories that ship several named templates.
    ``**extra``: more template variables, e.g. ``enable_thinking=False`` for Qwen3; they win over
    the special tokens, as in transformers.
    """
    if chat_template is None and tokenizer_folder is None:
        raise TypeError("apply_chat_template needs a template: pass tokenizer_folder= (a folder, Hub id or "
                        "load_tokenizer(...) result) or chat_template= (the Jinja text)")
    specials = read_special_tokens(tokenizer_folder) if tokenizer_folder is not None else {}
    if chat_template is None:
        chat_template = read_chat_template(tokenizer_folder, name=template_name, tools=tools)
    for name, value in (("bos_token", bos_token), ("eos_token", eos_token)):
        if value is None:
            specials.pop(name, None)
        elif value is not _NOT_GIVEN:
            if not isinstance(value, str):
                raise TypeError(f"{name} must be the token's text (e.g. '<|im_end|>'), got {type(value).__name__}")
            specials[name] = value
    return render_chat_template(chat_template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                documents=documents, **{**specials, **extra})


# ----------------------------------------------------------------------------- text -> ids

def encode_chat(tokenizer, chat, *, return_tensors: str | None = "pt", **template_kwargs):
    """Token ids of a chat for ``model.generate``: ``(1, T)`` int64 (or a list with ``return_tensors=None``).

    ``chat``: the text ``apply_chat_template`` returned, or the messages themselves (then
    rendered with the tokenizer's own template; ``template_kwargs`` go to ``apply_chat_template``).
    Encoded with ``add_special_tokens=False``: the template already wrote every special token
    (a BOS included, where the model wants one), so a tokenizer whose post-processor adds BOS
    (Llama 3) must not add it again; the special tokens in the text (``<|im_start|>``) still
    become their single ids. This is what ``transformers``' ``apply_chat_template(tokenize=True)`` does.
    """
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer (load_tokenizer(src)), got "
                        f"{type(tokenizer).__name__}")
    if return_tensors not in ("pt", None):
        raise ValueError(f"return_tensors must be 'pt' (a torch tensor) or None (a list), got {return_tensors!r}")
    if isinstance(chat, str):
        if template_kwargs:
            raise TypeError(f"{', '.join(template_kwargs)}: template arguments only apply when chat is a list of "
                            f"messages; this chat is already rendered text")
        text = chat
    else:
        if getattr(tokenizer, "source_folder", None) is not None or "chat_template" not in template_kwargs:
            template_kwargs.setdefault("tokenizer_folder", tokenizer)  # its template and special tokens
        text = apply_chat_template(chat, **template_kwargs)
    from course_lib.tokenizer_loading import check_text

    ids = tokenizer.encode(check_text(text, "chat"), add_special_tokens=False).ids
    if return_tensors is None:
        return ids
    import torch

    return torch.tensor([ids], dtype=torch.long)
