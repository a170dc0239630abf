"""PretrainRun and SFTRun: the seed's training method (SEED_SPEC §1) on the HF Trainer, improved.

    devops-model run -f examples/local/sft-lora.yaml                          # one process, here
    torchrun --nproc-per-node 8 -m devops_workloads.runner -f resource.yaml   # one node, 8 GPUs
    torchrun --nnodes $N --node-rank $R --master-addr $M --nproc-per-node 8 \\
        -m devops_workloads.runner -f resource.yaml                           # what PyTorchJob runs

Order of work (everything that can fail on the data fails before a model is loaded):
data (registry, sha1, stage, row problems) → tokenizer → tokenized examples (pt blocks or SFT turns,
packed) → model + fine-tuning mode (full / LoRA / freeze) → Trainer (DDP or DeepSpeed ZeRO from the
spec) → resume from the newest complete checkpoint → train → save (adapter or full, merged when asked)
→ loss curve, artifact.json.

Output folder (``spec.output.uri``): the model (adapter or full weights + tokenizer), ``merged/``
(LoRA merged, when asked), ``checkpoints/checkpoint-N/`` (each with ``run_config.json``),
``artifact.json``, ``run_config.json``, ``data_report.json``, ``progress.jsonl``,
``training_loss.png``, ``runs/`` (TensorBoard), ``trainer_state.json``.

A SIGTERM (preemption, ``kubectl delete pod``) saves a checkpoint at the end of the current step
and exits with ``runner.ExitCode.PREEMPTED``; the next start on the same output resumes from it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from devops_model.api.common import Artifact, TrainingProgress
from devops_model.api.training import RunStatus
from devops_model.contract import ExitCode, Reason, State
from devops_model.uris import UriError, local_path

from ..processes import free_port
from ..ranks import log0, rank
from ..runner import RunContext, WorkloadError
from .data import open_datasets

#: Default LoRA targets per architecture (config.model_type); others get every linear layer.
LORA_TARGETS = {
    "qwen": ["c_attn"],  # Qwen-1 (the seed's DEFAULT_MODULE)
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
       for t in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "llama", "mistral")},
}


def output_dir(resource: Any) -> Path:
    uri = resource.spec.output.uri
    try:
        return local_path(uri)
    except UriError:
        raise WorkloadError(f"spec.output.uri: {uri} must be pvc:// (in a cluster) or file:// (locally)",
                            reason=Reason.INVALID_OUTPUT, exit_code=ExitCode.BAD_INPUT) from None


def find_resume_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint-N whose save finished (``run_config.json`` is written last)."""
    done = [p for p in ckpt_dir.glob("checkpoint-*")
            if p.name.split("-")[-1].isdigit() and (p / "run_config.json").exists() and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


class Preemption:
    """SIGTERM sets a flag; the training callback saves and stops at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def install(self) -> "Preemption":
        self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)



def _load_model_dir(uri: str) -> Path:
    from ..sources import materialize_model

    return materialize_model(uri)


def resolved_config(ctx: RunContext, stage: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"resource": ctx.resource.to_dict(), "stage": stage, "resolvedModel": ctx.resolved_model, **extra}


def run(ctx: RunContext) -> RunStatus:
    """The workload of a PretrainRun or SFTRun (see the module docstring)."""
    res = ctx.resource
    spec = res.spec
    tr = spec.training
    stage = "pt" if res.kind == "PretrainRun" else "sft"
    out = output_dir(res)
    t_start = time.time()

    preempt = Preemption().install()
    try:
        # 1. data: everything a person must fix fails here, before any model is loaded
        from .tokenized import scan_data

        data = open_datasets(spec.data, stage, seed=tr.seed)
        scan_data(data, out)  # every row read once (rank 0), nothing kept; restarts reuse the scan
        if data.problems.total():
            log0(f"warning: {data.problems.total()} rows not used ({data.problems.summary()}); see data_report.json")
        model_path = _load_model_dir(ctx.resolved_model)
        return _train(ctx, stage, out, data, model_path, preempt, t_start)
    finally:
        preempt.uninstall()


def _train(ctx: RunContext, stage: str, out: Path, data, model_path: Path, preempt: Preemption, t_start: float) -> RunStatus:
    import torch
    from transformers import AutoTokenizer

    from ..templates import get_template

    res, spec = ctx.resource, ctx.resource.spec
    tr, ft = spec.training, spec.finetuning
    trust = spec.model.trust_remote_code
    if (model_path / "adapter_config.json").exists():
        # a LoRA adapter from an earlier SFTRun: train on top of its merged weights
        if not (model_path / "merged" / "config.json").exists():
            raise WorkloadError(
                f"spec.model: {ctx.resolved_model} is a LoRA adapter without merged weights; set "
                "spec.finetuning.lora.merge: true on the run that produced it, or point at a full model",
                reason=Reason.BAD_MODEL, exit_code=ExitCode.BAD_INPUT)
        model_path = model_path / "merged"
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust)
    template = get_template(tr.template)

    # 2. tokenized examples: streamed into memory-mapped files under out/tokenized/ once, reused after
    from .tokenized import prepare_training_data

    prepared = prepare_training_data(data, tokenizer, model_path, template, tr, spec.data.val_size, out)
    report, collator, tokens_mode = prepared.report, prepared.collator, prepared.tokens_mode
    train_items, eval_items = prepared.train, prepared.eval

    # 3. model
    on_cpu = not torch.cuda.is_available()
    model = _load_model(model_path, tr.precision, ft.type, on_cpu, trust)
    model = _apply_finetuning(model, ft)
    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False  # no KV cache in training; packed position_ids need cache=None

    # 4. trainer
    from .callbacks import CheckpointConfigCallback, PreemptionCallback, ProgressCallback
    from .selective_loss import SelectiveHeadTrainer

    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    ds_cfg = None
    if spec.distributed.backend == "deepspeed":
        ds_cfg = _deepspeed(spec.distributed.deepspeed, on_cpu, out)
    args = _training_arguments(spec, out, on_cpu=on_cpu, ds_cfg=ds_cfg, has_eval=eval_items is not None,
                               tokens_mode=tokens_mode)
    config = resolved_config(ctx, stage, {
        "modelPath": str(model_path), "templateName": tr.template, "onCpu": on_cpu,
        "worldSize": int(os.environ.get("WORLD_SIZE", "1")), "deepspeed": ds_cfg, "data": report,
    })
    if rank() == 0:
        log0("resolved config: " + json.dumps({k: v for k, v in config.items() if k != "resource"}, ensure_ascii=False, default=str)[:2000])
        (out / "run_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False, default=str))
        (out / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))

    progress = ProgressCallback(out, f"{res.kind}/{ctx.name}", spec.output.uri)
    trainer = SelectiveHeadTrainer(  # the LM head only where a token is trained (same loss, less compute)
        model=model,
        args=args,
        train_dataset=train_items,
        eval_dataset=eval_items,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[progress, CheckpointConfigCallback(config), PreemptionCallback(preempt)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the progress bar and progress.jsonl carry the logs
    resume = None
    if spec.failure_policy.resume == "Latest":
        resume = find_resume_checkpoint(ckpt_dir)
        if resume is not None:
            log0(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    progress.close()
    if preempt.requested:
        raise WorkloadError(
            f"preempted (SIGTERM) at step {trainer.state.global_step}; checkpoint saved in {progress.last_checkpoint}, "
            "the next start resumes from it", reason=Reason.PREEMPTED, exit_code=ExitCode.PREEMPTED)

    final_eval = trainer.evaluate() if eval_items is not None else None
    return _finish(ctx, stage, trainer, progress, out, model_path, tokenizer, report, data, final_eval)


def _training_arguments(spec: Any, out: Path, *, on_cpu: bool, ds_cfg: dict[str, Any] | None, has_eval: bool,
                        tokens_mode: str) -> Any:
    """transformers' TrainingArguments from the run's spec (the trainer's only configuration)."""
    from transformers import TrainingArguments

    tr, ft = spec.training, spec.finetuning
    bf16 = not on_cpu and tr.precision == "bf16"
    fp16 = not on_cpu and tr.precision == "fp16"
    # This run's TensorBoard folder (set, not setdefault: a second run in one process must not log
    # into the first one's folder).
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "runs")
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=tr.per_device_batch_size,
        per_device_eval_batch_size=tr.per_device_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        learning_rate=float(tr.learning_rate),
        lr_scheduler_type=tr.lr_scheduler,
        warmup_steps=float(tr.warmup_ratio),
        weight_decay=float(tr.weight_decay),
        max_grad_norm=float(tr.max_grad_norm),
        num_train_epochs=tr.epochs or 1,
        max_steps=tr.max_steps or -1,
        logging_steps=tr.logging_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        eval_strategy="steps" if (tr.eval_steps and has_eval) else "no",
        eval_steps=tr.eval_steps,
        seed=tr.seed,
        data_seed=tr.seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=on_cpu,
        ddp_backend="gloo" if (on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1) else None,
        deepspeed=ds_cfg,
        activation_checkpointing=tr.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tr.gradient_checkpointing else None,
        report_to=["tensorboard"],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,  # our ProgressReporter draws the one bar
        include_num_input_tokens_seen=tokens_mode,
        ddp_find_unused_parameters=False if ft.type != "full" else None,
        save_only_model=False,  # optimizer and scheduler state are needed to resume exactly
    )


def _finish(ctx: RunContext, stage: str, trainer: Any, progress: Any, out: Path, model_path: Path, tokenizer: Any,
            report: dict[str, Any], data: Any, final_eval: dict[str, Any] | None) -> RunStatus:
    """Save the model (every rank: ZeRO-3 gathers the weights), the conventions, the merged LoRA, the
    loss curve and artifact.json (rank 0), and return the run's status."""
    res, spec = ctx.resource, ctx.resource.spec
    tr, ft = spec.training, spec.finetuning
    trust = spec.model.trust_remote_code
    ckpt_dir = out / "checkpoints"
    # 5. outputs: every rank takes part in saving (ZeRO-3 gathers the weights), rank 0 writes the rest
    trainer.save_model(str(out))
    trainer.save_state()
    if trainer.is_world_process_zero():
        if (ckpt_dir / "trainer_state.json").exists():  # save_state writes into args.output_dir
            (out / "trainer_state.json").write_text((ckpt_dir / "trainer_state.json").read_text())
        _save_conventions(out, model_path, tokenizer, tr.template if stage == "sft" else None)
    merged_uri = None
    if ft.type == "lora" and (ft.lora.merge if ft.lora else False) and trainer.is_world_process_zero():
        _merge_lora(out, model_path, tokenizer, trust, tr.template if stage == "sft" else None)
        merged_uri = spec.output.uri.rstrip("/") + "/merged"
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    artifact = {
        "uri": spec.output.uri,
        "format": "hf-lora" if ft.type == "lora" else "hf-full",
        "baseModel": ctx.resolved_model,
        "parent": f"{ctx.parent['kind']}/{ctx.parent['metadata']['name']}" if ctx.parent else None,
        "template": tr.template if stage == "sft" else None,
    }
    if merged_uri:
        artifact["mergedUri"] = merged_uri
    artifact = {k: v for k, v in artifact.items() if v is not None}
    summary = (f"{trainer.state.global_step} steps, loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses
               else f"{trainer.state.global_step} steps")
    if final_eval and "eval_loss" in final_eval:
        summary += f", eval loss {final_eval['eval_loss']:.3f}"
    if data.problems.total():
        summary += f"; {data.problems.total()} rows not used ({data.problems.summary()})"
    trunc = report.get("truncation") or {}
    if trunc.get("history_truncated") or trunc.get("final_turn_truncated"):
        summary += (f"; {trunc['history_truncated']} samples lost history turns, "
                    f"{trunc['final_turn_truncated']} final turns cut to maxLength")
    if trainer.is_world_process_zero():
        from .plot import plot_loss

        plot_loss(out, history, title=f"{res.kind}/{ctx.name}")
        (out / "artifact.json").write_text(json.dumps({**artifact, "dataFingerprints": data.fingerprints}, indent=2, ensure_ascii=False))
    # The kind's status model: a misspelt or unknown field is an error here, not a silent drop later.
    return RunStatus(
        state=State.SUCCEEDED,
        artifact=Artifact.model_validate(artifact),
        message=summary,
        progress=TrainingProgress(step=trainer.state.global_step, total_steps=trainer.state.max_steps,
                                  loss=losses[-1] if losses else None, epoch=trainer.state.epoch,
                                  last_checkpoint=progress.last_checkpoint, percent=100),
    )


def _load_model(path: Path, precision: str, ft_type: str, on_cpu: bool, trust: bool):
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    # full/freeze keep fp32 master weights (seed: model.float()); LoRA loads the frozen base in the compute dtype
    dtype = torch.float32
    if not on_cpu and ft_type == "lora" and precision != "fp32":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    attn = "flash_attention_2" if (not on_cpu and importlib.util.find_spec("flash_attn")) else "sdpa"
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn, trust_remote_code=trust)


def _apply_finetuning(model, ft):
    if ft.type == "full":
        return model
    if ft.type == "lora":
        from peft import LoraConfig, get_peft_model

        lora = ft.lora or _default_lora()
        targets = lora.target_modules or LORA_TARGETS.get(model.config.model_type, "all-linear")
        cfg = LoraConfig(task_type="CAUSAL_LM", r=lora.rank, lora_alpha=lora.alpha, lora_dropout=float(lora.dropout),
                         target_modules=targets)
        model.enable_input_require_grads()  # gradient checkpointing needs a grad path from the inputs
        try:
            return get_peft_model(model, cfg)
        except ValueError as exc:
            raise WorkloadError(f"spec.finetuning.lora.targetModules: {exc}", reason=Reason.BAD_SPEC, exit_code=ExitCode.BAD_INPUT) from exc
    # freeze: train only the named modules of the last N layers (seed: last 3 layers' mlp)
    fr = ft.freeze or _default_freeze()
    n_layers = model.config.num_hidden_layers
    keep = range(max(0, n_layers - fr.trainable_layers), n_layers)
    prefixes = [f"{sep}{i}.{m}" for i in keep for m in fr.trainable_modules for sep in (".layers.", ".h.")]
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = any(pref in name for pref in prefixes)
        n += p.requires_grad
    if n == 0:
        raise WorkloadError(f"spec.finetuning.freeze.trainableModules: none of {fr.trainable_modules} found in the last "
                            f"{fr.trainable_layers} layers", reason=Reason.BAD_SPEC, exit_code=ExitCode.BAD_INPUT)
    return model


def _default_lora():
    from devops_model.api.training import LoraSpec

    return LoraSpec()


def _default_freeze():
    from devops_model.api.training import FreezeSpec

    return FreezeSpec()


def _deepspeed(ds_spec, on_cpu: bool, out: Path) -> dict[str, Any]:
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:
        raise WorkloadError(f"spec.distributed.backend: deepspeed cannot be imported here ({exc}); install "
                            "deepspeed (the train extra has it) or use backend: ddp", reason=Reason.MISSING_DEPENDENCY,
                            exit_code=ExitCode.BAD_INPUT) from exc
    from devops_model.api.training import DeepSpeedSpec

    from .deepspeed_config import deepspeed_config

    ds_spec = ds_spec or DeepSpeedSpec()
    cfg = deepspeed_config(ds_spec.zero_stage, ds_spec.offload_optimizer, ds_spec.offload_params, on_cpu=on_cpu)
    # DeepSpeed initialises torch.distributed itself; a lone local process needs the rendezvous env
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "deepspeed_config.json").write_text(json.dumps(cfg, indent=2))
    return cfg


def _save_conventions(out: Path, base: Path, tokenizer, template: str | None) -> None:
    """The tokenizer and generation config of what was trained: an SFT run's chat template, eos
    (``<|im_end|>`` for chatml) and stop ids, so that every server stops where the model learnt to."""
    from .. import conventions

    if template is None:
        tokenizer.save_pretrained(str(out))
        return
    conventions.apply_template(tokenizer, template)
    conventions.save_tokenizer(tokenizer, out)
    conventions.write_generation_config(out, base, tokenizer, template)


def _merge_lora(out: Path, base: Path, tokenizer, trust: bool, template: str | None = None) -> Path:
    """LoRA merged into the base weights (seed export_model), saved as ``merged/`` for serving and GPTQ."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, trust_remote_code=trust)
    merged = PeftModel.from_pretrained(base_model, str(out)).merge_and_unload()
    target = out / "merged"
    merged.save_pretrained(str(target), safe_serialization=True)
    _save_conventions(target, out, tokenizer, template)  # generation config: the run's (out/), not the base's
    return target
