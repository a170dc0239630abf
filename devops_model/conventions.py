"""Chat conventions of an artifact — its chat template, stop tokens, revision — as data, for every engine.

    from devops_model.conventions import chat_template_text, engine_settings
    chat_template_text("chatml")                          # the Jinja text of the seed's chatml
    engine_settings(artifact, "vllm")                      # flags/env a vLLM Deployment needs
    engine_settings({"uri": "hf://Qwen/Qwen2.5-7B@v1"}, "tgi").args   # ['--revision', 'v1']

One home for the rule "a fine-tuned model is served with the template it was trained with": the
SFT workload writes it into the artifact's tokenizer and generation config
(``devops_workloads.conventions``), the built-in server and GPTQ calibration read it from there,
and the operator's vLLM/TGI builders take the same facts from the artifact record through
:func:`engine_settings`. Pure: no torch, no transformers, no I/O.

Templates (the seed's, ``SEED_SPEC.md`` §1c), written as Jinja so any engine renders them:

* ``chatml``: ``<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n``,
  default system "You are a helpful assistant." (also Qwen-1's ``make_context``), stop ``<|im_end|>``;
* ``default``: ``{system}\\nHuman: {q}\\nAssistant: `` + answer + eos, then ``\\nHuman: …``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHATML_SYSTEM = "You are a helpful assistant."
DEFAULT_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")

#: The seed's chatml (and Qwen-1-Chat's make_context): a default system prompt, then
#: <|im_start|>role\ncontent<|im_end|>\n per message.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + CHATML_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: The seed's ``default`` template: system, "\n", then "Human: q\nAssistant: " + answer + eos per turn,
#: turns joined by "\n" (templates.py renders the same text piece by piece).
DEFAULT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- else %}{%- set system = '" + DEFAULT_SYSTEM.replace("'", "\\'") + "' %}{%- endif %}"
    "{%- set ns = namespace(first=true) %}"
    "{%- if system %}{{- system + '\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- ('' if ns.first else '\\n') + 'Human: ' + message['content'] + '\\nAssistant: ' }}"
    "{%- set ns.first = false %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)

TEMPLATE_TEXT = {"chatml": CHATML_TEMPLATE, "default": DEFAULT_TEMPLATE}
#: Stop words per template (the seed's ``stop_words``); ``default`` stops at the tokenizer's eos.
STOP_WORDS = {"chatml": ("<|im_end|>",), "default": ()}


def chat_template_text(template: str | None) -> str | None:
    """The Jinja chat template of a seed template name; None for ``auto``/unknown (the tokenizer's own)."""
    return TEMPLATE_TEXT.get(template or "")


def hub_revision(uri: str | None) -> str | None:
    """The revision of ``hf://ORG/NAME@REV`` / ``modelscope://ORG/NAME@REV`` (None when not pinned)."""
    if not uri or "://" not in uri:
        return None
    scheme, rest = uri.split("://", 1)
    if scheme not in ("hf", "modelscope") or "@" not in rest:
        return None
    return rest.rsplit("@", 1)[1] or None


def hub_repo(uri: str | None) -> str | None:
    """``ORG/NAME`` of a hub URI, without the revision."""
    if not uri or "://" not in uri:
        return None
    scheme, rest = uri.split("://", 1)
    return rest.split("@", 1)[0] if scheme in ("hf", "modelscope") else None


@dataclass
class EngineSettings:
    """What one serving engine needs from an artifact record, ready for a container spec."""

    engine: str
    #: container args to add (after the model argument)
    args: list[str] = field(default_factory=list)
    #: container env to add
    env: dict[str, str] = field(default_factory=dict)
    #: stop strings a proxy adds to every chat request (engines without a per-model stop setting)
    stop: list[str] = field(default_factory=list)
    #: what the engine takes from the artifact's own files (documented, nothing to add)
    from_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def engine_settings(artifact: dict[str, Any], engine: str, *, model_type: str | None = None) -> EngineSettings:
    """Flags/env for ``engine`` (vllm | tgi | builtin) from an artifact record (``status.artifact``
    or a plain ``{"uri": ...}`` for a hub model): chat template, stop tokens, revision.

    * The chat template: an SFT artifact's ``template`` (chatml/default) is already in its
      tokenizer_config.json (written by the SFT run); vLLM also gets it as ``--chat-template`` so
      that an artifact written before that rule, or a GPTQ copy of it, is served the same way. TGI
      has no such flag: it reads tokenizer_config.json only.
    * Stop tokens: the artifact's generation_config.json lists them as ``eos_token_id`` (the SFT run
      adds ``<|im_end|>`` for chatml). vLLM reads it with ``--generation-config auto``; TGI reads it
      by itself; both also stop at the tokenizer's eos. For a hub model with no such file, ``stop``
      carries the template's stop words for the proxy to add per request.
    * The revision of ``hf://ORG/NAME@REV``: ``--revision REV`` (vLLM: also ``--tokenizer-revision``).
    * ``model_type: qwen`` (first-generation Qwen): neither engine runs it as Qwen2 without
      conversion; the builder points the engine at the converted folder (``devops-model convert``).
    """
    engine = engine.lower()
    if engine not in ("vllm", "tgi", "builtin"):
        raise ValueError(f"engine must be vllm, tgi or builtin (got {engine!r})")
    out = EngineSettings(engine=engine)
    template = artifact.get("template")
    text = chat_template_text(template)
    uri = artifact.get("mergedUri") or artifact.get("uri")
    rev = hub_revision(uri)
    out.stop = list(STOP_WORDS.get(template or "", ()))
    if engine == "vllm":
        if text:
            out.args += ["--chat-template", text]
        out.args += ["--generation-config", "auto"]
        if rev:
            out.args += ["--revision", rev, "--tokenizer-revision", rev]
        out.from_files = ["tokenizer_config.json: chat_template, eos_token", "generation_config.json: eos_token_id (stop ids), sampling defaults"]
    elif engine == "tgi":
        if rev:
            out.args += ["--revision", rev]
        out.from_files = ["tokenizer_config.json: chat_template (TGI has no flag for it)",
                          "generation_config.json: eos_token_id (stop ids)"]
        if text:
            out.notes.append(f"template {template}: TGI renders the tokenizer's chat_template; SFT artifacts carry it")
    else:
        out.from_files = ["tokenizer_config.json: chat_template, eos_token", "generation_config.json: eos_token_id"]
    if model_type == "qwen":
        out.notes.append("first-generation Qwen: serve the converted folder (devops-model convert --model DIR), "
                         "no --trust-remote-code needed")
    return out
