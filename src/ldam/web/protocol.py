"""The messages a browser may send, validated before anything acts on them.

Every message is a JSON object with a ``type``. Types, ranges and sizes are checked here; a
message that fails gets an ``{"type": "error", "message": ...}`` reply and changes nothing.
Models are named only among those the server was started with; no message can name a path.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .session import DEFAULT_CHAINS, MAX_CHAINS, METHODS, PARAMETERIZATIONS, RANGES

MAX_MESSAGE = 64 * 1024  # bytes, for everything but uploads
MAX_UPLOAD = 2 * 1024 * 1024  # bytes of the encoded image, before base64


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


Name = Annotated[str, Field(min_length=1, max_length=200)]


class Start(_Msg):
    type: Literal["start"]
    model: Name
    layer: Name
    unit: Union[Literal["all"], Annotated[int, Field(ge=0, le=100_000)]]
    chains: Annotated[int, Field(ge=1, le=MAX_CHAINS)] = DEFAULT_CHAINS
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    parameterization: Literal[PARAMETERIZATIONS] = "pixel"  # type: ignore[valid-type]
    transforms: bool = False  # jitter, scale and rotation robustness (unadjusted methods only)
    ack: bool = False  # the page will acknowledge every frame it shows (flow control)


def _knob(name: str, kind: type = float) -> Any:
    lo, hi, _ = RANGES[name]
    if kind is int:
        return Annotated[int, Field(ge=int(lo), le=int(hi))]
    return Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False)]


class Set(_Msg):
    type: Literal["set"]
    temperature: _knob("temperature") | None = None  # type: ignore[valid-type]
    step_size: _knob("step_size") | None = None  # type: ignore[valid-type]
    l2: _knob("l2") | None = None  # type: ignore[valid-type]
    disc_weight: _knob("disc_weight") | None = None  # type: ignore[valid-type]
    ema_tau: _knob("ema_tau") | None = None  # type: ignore[valid-type]
    method: Literal[METHODS] | None = None  # type: ignore[valid-type]
    steps_per_frame: _knob("steps_per_frame", int) | None = None  # type: ignore[valid-type]
    display: Literal["signed", "pixel"] | None = None

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"type"}).items() if v is not None}


class Simple(_Msg):
    type: Literal["pause", "resume", "reset", "snapshot"]


class Record(_Msg):
    type: Literal["record"]
    on: bool


class Ack(_Msg):
    """The page has shown frame ``seq``: the server keeps at most a few frames in flight."""

    type: Literal["ack"]
    seq: Annotated[int, Field(ge=0, le=2**53)]


class DatasetInput(_Msg):
    kind: Literal["dataset"]
    index: Annotated[int, Field(ge=0, le=1_000_000)]


class PhotoInput(_Msg):
    kind: Literal["photo"]
    name: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z_]+$")]


class UploadInput(_Msg):
    kind: Literal["upload"]
    data: Annotated[str, Field(min_length=1, max_length=(MAX_UPLOAD * 4) // 3 + 8)]  # base64


class Activations(_Msg):
    type: Literal["activations"]
    model: Name
    layer: Name
    input: Annotated[Union[DatasetInput, PhotoInput, UploadInput], Field(discriminator="kind")]


class Top(_Msg):
    type: Literal["top9"]
    model: Name
    layer: Name
    unit: Annotated[int, Field(ge=0, le=100_000)]


Message = Annotated[Union[Start, Set, Simple, Record, Activations, Top, Ack], Field(discriminator="type")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)
TYPES = ("start", "set", "pause", "resume", "reset", "snapshot", "record", "activations", "top9", "ack")


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: a reply never echoes a large client value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ProtocolError(ValueError):
    """A client message that cannot be acted on; the text is sent back to the client."""


def parse(text: str | bytes) -> Any:
    """Validate one client message; raise :class:`ProtocolError` with a readable reason."""
    limit = MAX_MESSAGE + (MAX_UPLOAD * 4) // 3 + 1024
    if len(text) > limit:
        raise ProtocolError(f"message too large ({len(text)} bytes; the limit is {limit})")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("malformed JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ProtocolError("a message must be a JSON object with a 'type'")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise ProtocolError(f"unknown message type {short(kind)}; expected one of {', '.join(TYPES)}")
    if kind != "activations" and len(text) > MAX_MESSAGE:
        raise ProtocolError(f"message too large ({len(text)} bytes; the limit is {MAX_MESSAGE})")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "message"
        if len(where) > 60:
            where = where[:57] + "..."
        raise ProtocolError(f"invalid {kind!r} message: {where}: {first['msg']}") from None
    except RecursionError:
        raise ProtocolError(f"invalid {kind!r} message: nested too deeply") from None
