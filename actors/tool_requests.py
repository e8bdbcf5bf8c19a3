"""What a run request says about tools: the tools it offers the model, its decisions on pending
calls, and what to do when its conversation is busy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from rayruns.providers.base import TOOL_CALL_ID_MAX, TOOL_NAME_PATTERN, ToolDefinition


class ServerToolRef(BaseModel):
    """A server tool (registered with `RAYRUNS_TOOLS`) this run allows the model to call."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: Literal["server"]
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    requires_approval: bool = False


class FunctionTool(BaseModel):
    """A client tool, OpenAI's shape: the model's calls to it go back to the client."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: Literal["function"]
    function: ToolDefinition


RequestTool = Annotated[ServerToolRef | FunctionTool, Field(discriminator="type")]


class Approval(BaseModel):
    """The client's decision on a tool call that awaits approval."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    tool_call_id: str = Field(min_length=1, max_length=TOOL_CALL_ID_MAX)
    approve: bool
    reason: str | None = Field(default=None, max_length=4096)


# What a run does when its conversation already has an active run.
MultitaskStrategy = Literal["reject", "interrupt", "enqueue"]


def tool_name(tool: ServerToolRef | FunctionTool) -> str:
    return tool.name if isinstance(tool, ServerToolRef) else tool.function.name
