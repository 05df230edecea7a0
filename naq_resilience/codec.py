"""Encoding records: JSON by default, MessagePack when asked, pickle never.

A reader tells the two apart by the first byte (a JSON record is an object, so `{`;
a MessagePack map starts with 0x80-0x8f, 0xde or 0xdf), so no header is needed and a
worker reads jobs from producers using either. Encoders and typed decoders are built
once: msgspec's per-call cost is then a few hundred nanoseconds.

`NAQ_JOB_SERIALIZER` (NAQ's setting) chooses what a client writes: `json` or
`msgpack`. NAQ's own default is pickle, so a deployment that sets it to `pickle` is
told, not ignored: a pickled message runs code in whoever decodes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from naq_resilience.models import ENVELOPE_VERSION, JobEnvelope

__all__ = [
    "SERIALIZER_ENV",
    "Format",
    "InvalidMessage",
    "UnsendableValue",
    "decode",
    "decode_envelope",
    "encode",
    "encode_job_arguments",
    "serializer_from_env",
]

Format = Literal["json", "msgpack"]
T = TypeVar("T")
SERIALIZER_ENV = "NAQ_JOB_SERIALIZER"

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_json_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_msgpack_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}
_envelope_json = msgspec.json.Decoder(JobEnvelope)
_envelope_msgpack = msgspec.msgpack.Decoder(JobEnvelope)
_any_json = msgspec.json.Decoder()
_any_msgpack = msgspec.msgpack.Decoder()


_TOO_DEEP = (
    "message is not a job envelope: its values are nested too deep to decode (arrays or "
    "objects inside each other hundreds of levels deep)"
)


def serializer_from_env() -> Format:
    """The format `NAQ_JOB_SERIALIZER` asks for: `json` (also when unset) or `msgpack`.

    Anything else is an error rather than a fallback: `pickle` most of all, since a
    producer that believes it sends pickles and a worker that reads JSON disagree
    silently, and a pickle is code that runs wherever it is decoded.
    """
    raw = os.environ.get(SERIALIZER_ENV, "")
    value = raw.strip().lower()
    if value in ("", "json"):
        return "json"
    if value == "msgpack":
        return "msgpack"
    if value == "pickle":
        raise ValueError(
            f"{SERIALIZER_ENV}=pickle is refused: naq-resilience never pickles, because "
            "unpickling a message runs whatever code the message says, in the worker, for "
            "anyone who can publish to the queue. Jobs are sent as JSON or MessagePack: "
            f"set {SERIALIZER_ENV}=json (the default) or msgpack, and pass plain data "
            "(str, int, float, bool, None, list, dict, datetime, UUID, Decimal, a "
            "dataclass, a msgspec.Struct, an exception) or a reference to the data (a key, "
            "a path) instead of a Python object"
        )
    raise ValueError(
        f"{SERIALIZER_ENV}={raw!r} is not a serializer this library writes: set it to json "
        "(the default) or msgpack, or unset it"
    )


class UnsendableValue(TypeError):
    """A value an `enc_hook` refuses to send, with the reason and the fix for a person."""


class InvalidMessage(ValueError):
    """A message that is not a record we can read; `reason` says why, for the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(obj: Any, fmt: Format = "json") -> bytes:
    return _json.encode(obj) if fmt == "json" else _msgpack.encode(obj)


def _is_msgpack(data: bytes) -> bool:
    first = data[0] if data else 0
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


def decode(data: bytes, type_: type[T]) -> T:
    """Decode a record of `type_` from either format."""
    if _is_msgpack(data):
        decoder = _msgpack_decoders.get(type_)
        if decoder is None:
            decoder = _msgpack_decoders[type_] = msgspec.msgpack.Decoder(type_)
        return decoder.decode(data)  # type: ignore[no-any-return]
    jdecoder = _json_decoders.get(type_)
    if jdecoder is None:
        jdecoder = _json_decoders[type_] = msgspec.json.Decoder(type_)
    return jdecoder.decode(data)  # type: ignore[no-any-return]


def decode_envelope(data: bytes) -> JobEnvelope:
    """The job in a message, or `InvalidMessage` with a reason a person can act on.

    Nothing else escapes: a message is arbitrary bytes from anyone who may publish, and
    msgspec raises `RecursionError`, not `DecodeError`, for values nested past its
    depth limit (an array a thousand deep is 2 KB).
    """
    msgpack = _is_msgpack(data)
    try:
        envelope = (_envelope_msgpack if msgpack else _envelope_json).decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidMessage(_why_undecodable(data, msgpack, exc)) from None
    except RecursionError:
        raise InvalidMessage(_TOO_DEEP) from None
    except Exception as exc:  # nothing a message holds may crash the worker
        reason = f"message is not a job envelope: {type(exc).__name__}: {exc}"
        raise InvalidMessage(reason) from None
    if envelope.version != ENVELOPE_VERSION:
        raise InvalidMessage(
            f"job envelope version {envelope.version} is not supported by this worker "
            f"(it reads version {ENVELOPE_VERSION}); upgrade naq-resilience on the workers"
        )
    return envelope


def _why_undecodable(data: bytes, msgpack: bool, exc: msgspec.DecodeError) -> str:
    try:
        generic = (_any_msgpack if msgpack else _any_json).decode(data)
    except RecursionError:
        return _TOO_DEEP
    except msgspec.DecodeError:
        kind = "MessagePack" if msgpack else "JSON"
        return f"message is not valid {kind}: {exc}"
    if isinstance(generic, Mapping):
        version = generic.get("version")
        if isinstance(version, int) and version != ENVELOPE_VERSION:
            return (
                f"job envelope version {version} is not supported by this worker (it reads "
                f"version {ENVELOPE_VERSION}); upgrade naq-resilience on the workers"
            )
    return f"message is not a job envelope: {exc}"


def encode_job_arguments(
    function: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    fmt: Format = "json",
    enc_hook: Callable[[Any], Any] | None = None,
) -> None:
    """Find the argument that cannot be encoded, to raise a `TypeError` that names it.

    Called only after encoding the whole envelope failed, so the success path pays
    nothing for it. `enc_hook` is the one the envelope was encoded with, if any; an
    `UnsendableValue` it raises already says why and what to do.
    """
    if enc_hook is None:
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = (
            _json if fmt == "json" else _msgpack
        )
    elif fmt == "json":
        encoder = msgspec.json.Encoder(enc_hook=enc_hook)
    else:
        encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
    named = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            encoder.encode(value)
        except UnsendableValue as exc:
            raise TypeError(f"{label} of {function} cannot be sent: {exc}") from None
        except (TypeError, msgspec.EncodeError, OverflowError, RecursionError) as exc:
            raise TypeError(
                f"{label} of {function} cannot be sent as {fmt}: {type(value).__name__} "
                f"({exc}). Pass plain data: str, int, float, bool, None, list, dict, "
                "datetime, UUID, Decimal, a dataclass, a msgspec.Struct or an exception"
            ) from None
