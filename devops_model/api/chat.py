"""ChatDeployment: an in-cluster chat service with an OpenAI-compatible API and a web chat."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from .base import ApiModel, Rule
from .common import CommonStatus, EvalRunRef, ModelSource, Name, Resources, SecretKeyRef


class AuthSpec(ApiModel):
    """API key authentication (Authorization: Bearer KEY)."""

    api_key_secret: SecretKeyRef = Field(description="Secret key holding the API key.")


class ServeGate(ApiModel):
    """Serve only a model that passed its exams."""

    eval_run: Name = Field(description="EvalRun whose overall accuracy is checked.")
    min_accuracy: str = Field(pattern=r"^(0(\.[0-9]+)?|1(\.0+)?)$", max_length=16, description='Minimum overall accuracy (0-1), e.g. "0.55".')
    shots: int = Field(default=0, ge=0, le=5, description="Which shots setting of the EvalRun to read.")


class EngineSpec(ApiModel):
    """Serving engine settings."""

    name: Literal["vllm", "tgi", "builtin"] = Field(default="vllm", description="vllm (default), tgi (maintenance mode upstream) or builtin (CPU and small GPUs).")
    image: Optional[str] = Field(default=None, max_length=512, description="Override the engine image from the operator's configuration.")
    max_model_length: int = Field(default=4096, ge=128, le=1_048_576, description="Maximum tokens of prompt plus answer.")
    max_concurrency: int = Field(default=16, ge=1, le=4096, description="Concurrent requests before the server answers 429.")
    extra_args: Optional[list[Annotated[str, Field(max_length=1024)]]] = Field(default=None, max_length=64, description="Extra engine command-line arguments.")


class ChatSpec(ApiModel):
    """The chat service."""

    model: ModelSource = Field(description="The model to serve (plain, LoRA-merged or GPTQ).")
    served_model_name: Optional[str] = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._/-]+$", description="Model id in the API (default: the resource name).")
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(default=1, ge=0, le=100, description="Number of server pods behind the Service.")
    resources: Resources = Field(default_factory=Resources)
    auth: Optional[AuthSpec] = Field(default=None, description="Require an API key.")
    ui: Literal["enabled", "disabled"] = Field(default="enabled", description="Serve the web chat page at /.")
    gate: Optional[ServeGate] = Field(default=None, description="Only serve when an EvalRun reached a minimum score.")
    network_policy: Literal["none", "namespace"] = Field(default="none", description="namespace: only pods of the same namespace may connect.")
    port: int = Field(default=8000, ge=1024, le=65535, description="Port of the API and the web chat (Service and container).")

    rules = (
        Rule(
            cel="(has(self.engine) && self.engine.name == 'builtin') || (has(self.resources) && self.resources.gpusPerNode >= 1)",
            message="engines vllm and tgi need resources.gpusPerNode >= 1; use engine.name: builtin on CPU",
            check=lambda m: m.engine.name == "builtin" or m.resources.gpus_per_node >= 1,
            field=".engine.name",
        ),
        Rule(
            cel="!has(self.resources) || self.resources.nodes == 1",
            message="a ChatDeployment replica runs on one node; scale with replicas",
            check=lambda m: m.resources.nodes == 1,
            field=".resources.nodes",
        ),
    )


class Endpoint(ApiModel):
    url: str = Field(description="In-cluster base URL of the OpenAI-compatible API (append /v1).")
    model: str = Field(description="Model id to send in requests.")
    ui: Optional[str] = Field(default=None, description="Web chat URL.")


class ChatStatus(CommonStatus):
    endpoint: Optional[Endpoint] = None
    replicas: Optional[int] = None
    ready_replicas: Optional[int] = None
    resolved_model: Optional[str] = None
    lineage: Optional[list[str]] = Field(default=None, description="kind/name chain that produced the served model.")
    children: Optional[list[str]] = None


class ChatDeployment(ApiModel):
    """An in-cluster chat service (OpenAI-compatible API, optional web chat)."""

    api_version: Literal["devops-model.io/v1alpha1"] = "devops-model.io/v1alpha1"
    kind: Literal["ChatDeployment"] = "ChatDeployment"
    metadata: dict = Field(default_factory=dict)
    spec: ChatSpec
    status: Optional[ChatStatus] = None
