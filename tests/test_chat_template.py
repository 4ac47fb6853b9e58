"""``course_lib.chat_template`` renders the published chat templates exactly as ``transformers`` does.

The templates are the real ones of HuggingFaceTB/SmolLM2-135M-Instruct, Qwen/Qwen2.5-0.5B-Instruct and
Qwen/Qwen3-0.6B (``tests/fixtures/chat_templates``, see its README for the sources). Each is rendered for
several conversations (with and without a system message, several turns, non-ASCII text, tool calls,
Qwen3's thinking switch) by the course and by ``transformers``' ``apply_chat_template`` on a tokenizer
object that carries the same template and special tokens: the strings must be identical. Then the
helpers (``tojson``, ``strftime_now``, ``raise_exception``, loop controls, the sandbox) and the errors.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pytest

from course_lib.chat_template import (ChatTemplateError, apply_chat_template, compile_chat_template, encode_chat,
                                      read_chat_template, read_special_tokens, render_chat_template)

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

# The special tokens each repository's tokenizer_config.json names (bos_token null in Qwen's: left out).
SPECIAL_TOKENS = {
    "SmolLM2-135M-Instruct": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                              "unk_token": "<|endoftext|>"},
    "Qwen2.5-0.5B-Instruct": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "Qwen3-0.6B": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
}
NAMES = list(SPECIAL_TOKENS)

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Température actuelle d'une ville <b>en °C</b> & rien d'autre",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. Zürich"}},
                   "required": ["city"]}}}

CONVERSATIONS = {
    "user only": [{"role": "user", "content": "What is RoPE?"}],
    "system + user": [{"role": "system", "content": "You answer in one sentence."},
                      {"role": "user", "content": "What is RoPE?"}],
    "multi-turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Name a prime."},
                   {"role": "assistant", "content": "7"},
                   {"role": "user", "content": "And one more?"}],
    "non-ASCII": [{"role": "user",
                   "content": "Grüße aus Köln! ¿Qué tal? 日本語 🙂 \"quotes\" <tags> & 'apostrophes'"},
                  {"role": "assistant", "content": "Très bien, merci — ça va. ✓"},
                  {"role": "user", "content": "Ünïcödé again\nwith a second line\tand a tab"}],
    "ends with the assistant": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
}
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": "Wie ist das Wetter in Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "content": "{\"temp\": 21, \"sky\": \"sonnig ☀\"}"},
    {"role": "user", "content": "Und morgen?"},
]
QWEN3_THINKING = [
    {"role": "user", "content": "What is 17 * 3?"},
    {"role": "assistant", "content": "51", "reasoning_content": "17 * 3 = 51."},
    {"role": "user", "content": "And 17 * 4?"},
    {"role": "assistant", "content": "<think>\n17 * 4 = 68\n</think>\n\n68"},
]


def template(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def reference_tokenizer(tf, chat_template: str, special_tokens: dict):
    """A transformers tokenizer object with the given template and special tokens (the vocabulary does not matter
    to the template; the special tokens are added to it, as in the published tokenizers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.BPE(vocab={chr(c): i for i, c in enumerate(range(32, 127))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
    tok.chat_template = chat_template
    return tok


def hub_folder(root: Path, name: str, *, where: str = "tokenizer_config.json") -> Path:
    """A folder as the Hub serves the model's tokenizer settings, the template in ``where``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"tokenizer_class": "GPT2Tokenizer" if name.startswith("SmolLM2") else "Qwen2Tokenizer",
              "bos_token": None, "unk_token": None, **SPECIAL_TOKENS[name]}
    if where == "tokenizer_config.json":
        config["chat_template"] = template(name)
    elif where == "chat_template.jinja":
        (folder / where).write_bytes(template(name).encode("utf-8"))
    elif where == "chat_template.json":
        (folder / where).write_text(json.dumps({"chat_template": template(name)}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------- the fixtures themselves

def test_fixtures_are_the_published_bytes():
    """No header, no editor-added line break: the templates render exactly what the models were trained on."""
    smollm = template("SmolLM2-135M-Instruct")
    assert smollm.startswith("{% for message in messages %}") and smollm.endswith("{% endif %}")
    assert "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in smollm  # a real line break
    qwen25 = template("Qwen2.5-0.5B-Instruct")
    assert qwen25.startswith("{%- if tools %}\n") and qwen25.endswith("{%- endif %}\n")
    assert "'<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud." in qwen25  # backslash-n in the source
    qwen3 = template("Qwen3-0.6B")
    assert qwen3.startswith("{%- if tools %}\n") and qwen3.endswith("{%- endif %}")
    assert "enable_thinking is defined and enable_thinking is false" in qwen3
    assert "\r" not in smollm + qwen25 + qwen3


@pytest.mark.parametrize("name, messages, kwargs, expected", [
    ("SmolLM2-135M-Instruct", [{"role": "user", "content": "Hi"}], {},
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("Qwen2.5-0.5B-Instruct", [{"role": "user", "content": "Hi"}], {},
     "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("Qwen3-0.6B", [{"role": "user", "content": "Hi"}], {"enable_thinking": False},
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ("Qwen3-0.6B", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
     {"add_generation_prompt": False},
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"),
])
def test_known_prompts(name, messages, kwargs, expected):
    """The prompts the model cards document, character for character."""
    assert apply_chat_template(messages, template(name), **SPECIAL_TOKENS[name], **kwargs) == expected


# ----------------------------------------------------------------------------- parity with transformers

@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_same_text_as_transformers(tf, tmp_path, name, conversation, add_generation_prompt):
    messages = CONVERSATIONS[conversation]
    theirs = reference_tokenizer(tf, template(name), SPECIAL_TOKENS[name]).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    folder = hub_folder(tmp_path, name)
    ours = apply_chat_template(messages, tokenizer_folder=folder, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert apply_chat_template(messages, template(name), add_generation_prompt=add_generation_prompt,
                               **SPECIAL_TOKENS[name]) == theirs  # the template passed as a string


@pytest.mark.parametrize("name", ["Qwen2.5-0.5B-Instruct", "Qwen3-0.6B"])
@pytest.mark.parametrize("with_tools", [True, False])
def test_tool_calls_and_tojson_as_transformers(tf, name, with_tools):
    """Tools go through tojson: no HTML escaping of <, >, &, ', and non-ASCII kept as it is."""
    tools = [WEATHER_TOOL] if with_tools else None
    theirs = reference_tokenizer(tf, template(name), SPECIAL_TOKENS[name]).apply_chat_template(
        TOOL_CONVERSATION, tools=tools, tokenize=False, add_generation_prompt=True)
    ours = apply_chat_template(TOOL_CONVERSATION, template(name), tools=tools, **SPECIAL_TOKENS[name])
    assert ours == theirs
    assert '{"name": "get_weather", "arguments": {"city": "Zürich"}}' in ours
    if with_tools:
        assert "<b>en °C</b> & rien d'autre" in ours and "\\u00e9" not in ours


@pytest.mark.parametrize("enable_thinking", [None, True, False])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_qwen3_thinking_as_transformers(tf, enable_thinking, add_generation_prompt):
    """Qwen3: reasoning_content (or <think> inside content) shown only after the last user turn; enable_thinking=False
    writes an empty <think></think> into the generation prompt."""
    name = "Qwen3-0.6B"
    switch = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    reference = reference_tokenizer(tf, template(name), SPECIAL_TOKENS[name])
    for messages in (QWEN3_THINKING, QWEN3_THINKING[:3], CONVERSATIONS["multi-turn"]):
        theirs = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                               **switch)
        ours = apply_chat_template(messages, template(name), add_generation_prompt=add_generation_prompt,
                                   **SPECIAL_TOKENS[name], **switch)
        assert ours == theirs
    if add_generation_prompt:
        assert ours.endswith("<think>\n\n</think>\n\n") == (enable_thinking is False)


def test_qwen3_reasoning_under_another_name_as_transformers(tf):
    """transformers copies "thinking" / "reasoning" to "reasoning_content" (the name Qwen3 reads): the course too."""
    name = "Qwen3-0.6B"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "thinking": "Greet back."}]
    theirs = reference_tokenizer(tf, template(name), SPECIAL_TOKENS[name]).apply_chat_template(
        messages, tokenize=False)
    ours = apply_chat_template(messages, template(name), add_generation_prompt=False, **SPECIAL_TOKENS[name])
    assert ours == theirs and "<think>\nGreet back.\n</think>" in ours


def test_none_values_are_dropped_as_transformers_does(tf):
    """APIs return content=None with tool calls: transformers drops None keys before rendering, so does the course."""
    name = "Qwen2.5-0.5B-Instruct"
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": TOOL_CONVERSATION[2]["tool_calls"]}]
    theirs = reference_tokenizer(tf, template(name), SPECIAL_TOKENS[name]).apply_chat_template(
        messages, tokenize=False)
    assert apply_chat_template(messages, template(name), add_generation_prompt=False) == theirs


@pytest.mark.parametrize("source", [
    "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}\n{% endfor %}",
    "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}",  # loopcontrols
    "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }}|{% endfor %}",
    "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=True) }}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    "{{ dict(a=1) | tojson }}",
    "Today is {{ strftime_now('%Y') }}.",
    "{%- for m in messages %}\n    {%- if m.role == 'user' %}\n        {{- m.content | upper }}\n    {%- endif %}\n"
    "{%- endfor %}\n{% if add_generation_prompt %}\n>\n{% endif %}",  # trim_blocks / lstrip_blocks
    "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
])
def test_jinja_settings_and_helpers_as_transformers(tf, source):
    messages = [{"role": "system", "content": "sys <&>"}, {"role": "user", "content": "héllo"},
                {"role": "assistant", "content": "ok"}]
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    theirs = reference_tokenizer(tf, source, specials).apply_chat_template(messages, tokenize=False,
                                                                           add_generation_prompt=True)
    assert apply_chat_template(messages, source, **specials) == theirs


def test_strftime_now_is_todays_date():
    text = apply_chat_template([{"role": "user", "content": "x"}], "{{ strftime_now('%d %b %Y') }}")
    assert text in {datetime.now().strftime("%d %b %Y")}


# ----------------------------------------------------------------------------- where the template comes from

@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.jinja", "chat_template.json"])
def test_template_from_each_file_the_hub_uses(tmp_path, where):
    name = "Qwen2.5-0.5B-Instruct"
    folder = hub_folder(tmp_path, name, where=where)
    assert read_chat_template(folder) == template(name)
    messages = CONVERSATIONS["system + user"]
    assert apply_chat_template(messages, tokenizer_folder=folder) == apply_chat_template(messages, template(name))


def test_chat_template_jinja_wins_over_tokenizer_config(tmp_path):
    folder = hub_folder(tmp_path, "SmolLM2-135M-Instruct")
    (folder / "chat_template.jinja").write_text("NEW {{ messages[0].content }}", encoding="utf-8")
    assert apply_chat_template([{"role": "user", "content": "x"}], tokenizer_folder=folder) == "NEW x"


def test_named_templates_pick_default_or_tool_use(tmp_path):
    folder = tmp_path / "named"
    folder.mkdir()
    templates = [{"name": "default", "template": "D{{ messages[0].content }}"},
                 {"name": "tool_use", "template": "T{{ tools | length }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}), encoding="utf-8")
    messages = [{"role": "user", "content": "x"}]
    assert apply_chat_template(messages, tokenizer_folder=folder) == "Dx"
    assert apply_chat_template(messages, tokenizer_folder=folder, tools=[WEATHER_TOOL]) == "T1"
    assert apply_chat_template(messages, tokenizer_folder=folder, template_name="tool_use", tools=[]) == "T0"
    with pytest.raises(ChatTemplateError, match="templates 'default', 'tool_use' but none named 'rag'"):
        apply_chat_template(messages, tokenizer_folder=folder, template_name="rag")


def test_special_tokens_from_the_configs(tmp_path):
    """Strings or AddedToken dicts; special_tokens_map.json wins; null leaves the token out (undefined)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False}, "eos_token": "</s>",
        "pad_token": None, "unk_token": "<unk>"}), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|eot|>"}}),
                                                    encoding="utf-8")
    assert read_special_tokens(folder) == {"bos_token": "<s>", "eos_token": "<|eot|>", "unk_token": "<unk>"}
    source = "{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}"
    (folder / "chat_template.jinja").write_text(source, encoding="utf-8")
    messages = [{"role": "user", "content": "x"}]
    assert apply_chat_template(messages, tokenizer_folder=folder) == "<s>|<|eot|>|False"
    assert apply_chat_template(messages, tokenizer_folder=folder, eos_token="E", bos_token=None) == "|E|False"
    assert apply_chat_template(messages, tokenizer_folder=folder, pad_token="P") == "<s>|<|eot|>|True"


def test_a_tokenizer_from_load_tokenizer_knows_its_folder(tmp_path):
    from tokenizers import Tokenizer, models

    from course_lib import load_tokenizer

    folder = hub_folder(tmp_path, "SmolLM2-135M-Instruct")
    backend = Tokenizer(models.BPE(vocab={chr(c): i for i, c in enumerate(range(32, 127))}, merges=[]))
    backend.save(str(folder / "tokenizer.json"))
    tok = load_tokenizer(folder)
    assert Path(tok.source_folder) == folder
    messages = CONVERSATIONS["user only"]
    assert apply_chat_template(messages, tokenizer_folder=tok) == apply_chat_template(messages, tokenizer_folder=folder)
    with pytest.raises(TypeError, match="does not say which folder"):
        apply_chat_template(messages, tokenizer_folder=Tokenizer.from_file(str(folder / "tokenizer.json")))


def test_encode_chat_adds_no_second_bos(tf, tmp_path):
    """A tokenizer whose post-processor adds BOS (Llama 3 style) and a template that writes bos_token itself:
    one BOS, as transformers' apply_chat_template(tokenize=True)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = {chr(c): i for i, c in enumerate(range(32, 127))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.add_special_tokens([AddedToken("<|begin_of_text|>", special=True), AddedToken("<|eot_id|>", special=True)])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", bos)])
    source = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    messages = [{"role": "user", "content": "Hi there"}]
    text = apply_chat_template(messages, source, **specials)
    ids = encode_chat(backend, text, return_tensors=None)
    assert ids.count(bos) == 1 and ids[0] == bos
    assert backend.encode(text).ids.count(bos) == 2  # what a plain encode would have done
    theirs = reference_tokenizer(tf, source, specials)
    theirs._tokenizer = backend
    assert ids == theirs.apply_chat_template(messages, tokenize=True, return_dict=False)
    tensor = encode_chat(backend, text)
    assert tensor.shape == (1, len(ids)) and tensor.dtype.is_floating_point is False and tensor[0].tolist() == ids


# ----------------------------------------------------------------------------- errors

def test_no_template_names_the_file_and_the_way_out(tmp_path):
    folder = tmp_path / "SmolLM2-135M"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}), encoding="utf-8")
    with pytest.raises(ChatTemplateError) as err:
        apply_chat_template([{"role": "user", "content": "Hi"}], tokenizer_folder=folder)
    message = str(err.value)
    assert "tokenizer_config.json" in message and "chat_template.jinja" in message and str(folder) in message
    assert "base model" in message and "-Instruct" in message and "plain text" in message
    with pytest.raises(TypeError, match="needs a template: pass tokenizer_folder="):
        apply_chat_template([{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize("messages, error, words", [
    ("Hello", TypeError, "list of {'role'"),
    ({"role": "user", "content": "Hi"}, TypeError, "wrap it in a list"),
    ([], ValueError, "messages is empty"),
    (["Hello"], TypeError, "messages[0] is a str"),
    ([{"content": "Hi"}], ValueError, "messages[0] has no 'role'"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant"}], ValueError,
     "messages[1] (role 'assistant') has no 'content'"),
    ([{"role": "user", "content": 42}], TypeError, "messages[0]['content'] is a int"),
    ([{"role": "user", "content": "Hi", "extra": object()}], TypeError, "messages[0]['extra'] is a object"),
    (None, TypeError, "got a NoneType"),
])
def test_bad_messages_are_clear_errors(messages, error, words):
    with pytest.raises(error) as err:
        apply_chat_template(messages, template("SmolLM2-135M-Instruct"))
    assert words in str(err.value)


def test_a_template_that_raises_passes_its_message_through(tf):
    source = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}{{ m.content }}{% endfor %}")
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="refused these messages: Conversation roles must alternate"):
        apply_chat_template(messages, source)
    with pytest.raises(Exception, match="Conversation roles must alternate"):  # transformers: the same words
        reference_tokenizer(tf, source, {}).apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("source, words", [
    ("{% for m in messages %}{{ m.content }}", "not valid Jinja (line 1"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox forbids"),
    ("{% set ns = namespace() %}{% set ns._secret = 1 %}", "sandbox forbids"),
    ("{{ messages.append({'role': 'x'}) }}", "sandbox forbids"),  # immutable: a template cannot edit the input
    ("", "non-empty string"),
    ("{{ messages[0].content + 1 }}", "failed on these messages (TypeError"),  # an error inside the template
])
def test_broken_or_hostile_templates_are_refused(source, words):
    with pytest.raises(ChatTemplateError) as err:
        apply_chat_template([{"role": "user", "content": "Hi"}], source)
    assert words in str(err.value)


def test_without_jinja2_the_error_names_the_install(monkeypatch):
    compile_chat_template.cache_clear()
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match=r'pip install "jinja2>=3.1.6"'):
        render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": "x"}])
    compile_chat_template.cache_clear()


def test_an_old_jinja2_is_refused(monkeypatch):
    import jinja2

    compile_chat_template.cache_clear()
    monkeypatch.setattr(jinja2, "__version__", "3.1.4")
    with pytest.raises(ImportError, match="too old to run chat templates safely"):
        render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": "x"}])
    compile_chat_template.cache_clear()


def test_course_lib_chat_template_imports_no_jinja2_until_used():
    import subprocess

    code = ("import sys, course_lib.chat_template as c; print('jinja2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_encode_chat_errors():
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        encode_chat("not a tokenizer", "text")
    with pytest.raises(ValueError, match="return_tensors must be 'pt'"):
        encode_chat(tok, "a", return_tensors="np")
    with pytest.raises(TypeError, match="already rendered text"):
        encode_chat(tok, "a", enable_thinking=False)
    with pytest.raises(TypeError, match="does not say which folder"):  # messages, and no template to render them
        encode_chat(tok, [{"role": "user", "content": "a"}])
    assert encode_chat(tok, [{"role": "user", "content": "a"}], chat_template="{{ messages[0].content }}",
                       return_tensors=None) == [0]
