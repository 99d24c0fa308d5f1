"""A2A messages and tasks to and from a skill's arguments and output.

A message's arguments: one data part holding a JSON object, or one text part that is a JSON
object, or, for a skill whose input is one string property, plain text for that property. Any
other part (raw bytes, a URL, several parts) is refused with INVALID_ARGUMENT before anything
is paid or run. An output is one artifact part: text holding the output's exact JSON (the
receipt commits to its SHA-256), media type application/json; a streamed skill's text arrives
as text parts appended to one artifact. What a task may keep of a message (its ids, its
metadata) is bounded here too (`check_sizes`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf import json_format, struct_pb2

from agents.errors import InvalidArgument
from agents.payments import MAX_CALL_ID_CHARS
from agents.skills import Skill
from marketplace.a2a_cards import JSON, _single_text_field

MAX_PARTS = 8
MAX_REFERENCES = 16  # a message's reference_task_ids
MAX_METADATA_BYTES = 64 * 1024
OUTPUT_ARTIFACT = "output"


def _plain(value: Any) -> Any:
    """Struct numbers are doubles: give integral ones back as ints (the skill's schema and
    Python types expect 3, not 3.0). An integral double of 2^53 or more may not be the integer
    its sender meant (2^53 + 1 arrives as 2^53), so it is refused, never run or charged as
    another number."""
    if isinstance(value, float) and value.is_integer():
        if abs(value) >= 2**53:
            raise InvalidArgument(f"the data part holds {value:.0f}, at or past 2^53, where a "
                                  "data part's numbers (doubles) lose integers: send the input "
                                  "as a text part of JSON (media type application/json)")
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _to_python(message: Any, where: str) -> Any:
    """A Struct or Value as JSON values: NaN and Infinity have none (JSON cannot carry them),
    so they are the sender's error, not ours."""
    try:
        return json_format.MessageToDict(message)
    except ValueError:
        raise InvalidArgument(f"{where} holds a number JSON cannot carry (NaN or Infinity): "
                              "send finite numbers, or strings") from None
    except RecursionError:
        raise InvalidArgument(f"{where} is nested too deeply") from None


def metadata_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return _to_python(struct, "message.metadata") if struct.fields else {}


def arguments_json(message: a2a_pb2.Message, skill: Skill) -> str:
    """The skill's input JSON text from the message's parts (InvalidArgument if they do not
    make one)."""
    parts = list(message.parts)
    if not parts:
        raise InvalidArgument("the message has no parts: send the skill's input as a data part")
    if len(parts) > MAX_PARTS:
        raise InvalidArgument(f"the message has {len(parts)} parts; at most {MAX_PARTS}")
    inputs = [p for p in parts if p.WhichOneof("content") in ("data", "text")]
    kinds = sorted({p.WhichOneof("content") or "empty" for p in parts} - {"data", "text"})
    if kinds:
        raise InvalidArgument(f"parts of type {', '.join(kinds)} are not accepted: the skill "
                              f"{skill.name} takes its input as one data part (a JSON object)")
    if len(inputs) != 1:
        raise InvalidArgument(f"send one part with the skill's input, not {len(inputs)}")
    part = inputs[0]
    if part.WhichOneof("content") == "data":
        value = _plain(_to_python(part.data, "the data part"))
        if not isinstance(value, dict):
            raise InvalidArgument("the data part must hold a JSON object (the skill's input)")
        return json.dumps(value)
    text = part.text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return text
    field = _single_text_field(skill.input_schema)
    if not field:
        raise InvalidArgument(f"the skill {skill.name} takes a JSON object; the text part is "
                              "not one (send a data part)")
    return json.dumps({field: text})


def output_artifact(output_json: str) -> a2a_pb2.Artifact:
    return a2a_pb2.Artifact(artifact_id=OUTPUT_ARTIFACT, name=OUTPUT_ARTIFACT,
                            parts=[a2a_pb2.Part(text=output_json, media_type=JSON)])


def agent_message(text: str, *, task_id: str, context_id: str,
                  metadata: dict[str, Any] | None = None) -> a2a_pb2.Message:
    message = a2a_pb2.Message(message_id=f"{task_id}:status", role=a2a_pb2.ROLE_AGENT,
                              task_id=task_id, context_id=context_id,
                              parts=[a2a_pb2.Part(text=text)])
    if metadata:
        message.metadata.update(metadata)
    return message


def status(state: int, message: a2a_pb2.Message | None = None) -> a2a_pb2.TaskStatus:
    out = a2a_pb2.TaskStatus(state=state)  # type: ignore[arg-type]
    out.timestamp.FromNanoseconds(time.time_ns())
    if message is not None:
        out.message.CopyFrom(message)
    return out


def check_history_length(request: Any) -> None:
    if request.HasField("history_length") and request.history_length < 0:
        raise InvalidArgument("history_length is 0 or more (unset: all of it)")


def check_sizes(message: a2a_pb2.Message) -> None:
    """Bound what a task may keep of a message (its ids) and its metadata, so that no caller
    parks megabytes per task in the store."""
    for name, value in (("context_id", message.context_id), ("task_id", message.task_id)):
        if len(value) > MAX_CALL_ID_CHARS:
            raise InvalidArgument(f"message.{name} is {len(value)} characters; at most "
                                  f"{MAX_CALL_ID_CHARS}")
    references = message.reference_task_ids
    if len(references) > MAX_REFERENCES or any(len(r) > MAX_CALL_ID_CHARS for r in references):
        raise InvalidArgument(f"message.reference_task_ids: at most {MAX_REFERENCES} ids of at "
                              f"most {MAX_CALL_ID_CHARS} characters")
    if message.metadata.ByteSize() > MAX_METADATA_BYTES:
        raise InvalidArgument(f"message.metadata is {message.metadata.ByteSize()} bytes; at "
                              f"most {MAX_METADATA_BYTES}")
