"""The business rules of a VoiceSeparate CreateMediaJobs request (spec §2), in one place.

Used by cirelay's submit endpoint (to answer the caller with every problem before anything
reaches CI) and by the CI emulator (to answer as CI would). The XSD
(``schemas/create-request.xsd``) checks the document's shape; the rules here repeat its
single-field checks, so a caller gets a dotted field path instead of an XSD error, and add the
co-constraints XSD 1.0 cannot express:

* TemplateId or inline VoiceSeparate (TemplateId wins when both are given: the inline
  parameters are then ignored by CI, so only their single-field checks apply);
* the codec x samplerate x channels matrix of §2.4, and MusicMode's codecs (mp3, wav, aac;
  samplerate, bitrate and channels ignored);
* Output.Object and Output.AuObject not both empty;
* CallBackMqConfig required when CallBackType is TDMQ;
* CallBack is an http(s) URL or the literal ``no``.

The input is the decoded ``<Request>`` as a dict keyed like the XML (``{"Tag", "Input":
{"Object"}, "Operation": {...}, ...}``); ``Operation`` may be a list (up to 6, D-OLD). Leaves
are strings (integers are accepted where the value is a number). Every violation is reported,
not just the first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["RuleViolation", "check_request"]

TAG = "VoiceSeparate"
AUDIO_MODES = ("IsAudio", "IsBackground", "AudioAndBackground", "MusicMode")
MUSIC_MODE = "MusicMode"
CODECS = ("aac", "mp3", "flac", "amr", "wav")
MUSIC_MODE_CODECS = ("mp3", "wav", "aac")  # T-NEW says "acc": a typo for aac (spec §2.4)
SAMPLERATES = ("8000", "11025", "22050", "32000", "44100", "48000", "96000")
CHANNELS = ("1", "2", "4", "5", "6", "8")
#: Spec §2.4 matrix: codec -> (samplerates, channels). wav exists only with MusicMode.
MATRIX: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "aac": (("11025", "22050", "32000", "44100", "48000", "96000"), CHANNELS),
    "flac": (("11025", "22050", "32000", "44100", "48000", "96000"), CHANNELS),
    "mp3": (("11025", "22050", "32000", "44100", "48000"), ("1", "2")),
    "amr": (("8000",), ("1",)),
}
DEFAULT_CODEC = "aac"
DEFAULT_SAMPLERATE = "44100"
BITRATE_RANGE = (8, 1000)
JOB_LEVELS = ("0", "1", "2")
CALLBACK_FORMATS = ("XML", "JSON")
CALLBACK_TYPES = ("Url", "TDMQ")
MQ_REGIONS = ("sh", "bj", "gz", "cd", "hk")
MQ_MODES = ("Queue", "Topic")
AUDIO_CONFIG_KEYS = ("Codec", "Samplerate", "Bitrate", "Channels")
MAX_OPERATIONS = 6
MAX_USER_DATA = 1024

_QUEUE_ID = re.compile(r"p[0-9a-f]{32}")
_TEMPLATE_ID = re.compile(r"t[0-9a-zA-Z]{1,64}")
_REGION = re.compile(r"[a-z]+(-[a-z0-9]+)+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9\-]*-[0-9]+")
_PRINTABLE_ASCII = re.compile(r"[ -~]*")
_DIGITS = re.compile(r"[0-9]+")

_KNOWN = {
    "": frozenset(
        {
            "Tag",
            "Input",
            "Operation",
            "QueueId",
            "QueueType",
            "CallBack",
            "CallBackFormat",
            "CallBackType",
            "CallBackMqConfig",
            "CallBackKafkaConfig",
        }
    ),
    "Input": frozenset({"Object"}),
    "Operation": frozenset({"TemplateId", "VoiceSeparate", "Output", "UserData", "JobLevel"}),
    "VoiceSeparate": frozenset({"AudioMode", "AudioConfig"}),
    "AudioConfig": frozenset(AUDIO_CONFIG_KEYS),
    "Output": frozenset({"Region", "Bucket", "Object", "AuObject", "BassObject", "DrumObject"}),
    "CallBackMqConfig": frozenset({"MqRegion", "MqMode", "MqName"}),
    "CallBackKafkaConfig": frozenset({"Region", "InstanceId", "Topic"}),
}


@dataclass(frozen=True)
class RuleViolation:
    """One broken rule: the dotted path of the field, why, and the code CI answers."""

    field: str
    message: str
    ci_code: str = "InvalidArgument"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "ci_code": self.ci_code}


def check_request(request: Mapping[str, Any]) -> list[RuleViolation]:
    """Every rule of §2 that ``request`` breaks, in document order; ``[]`` when it is fine."""
    checker = _Checker()
    checker.request(request)
    return checker.violations


@dataclass
class _Checker:
    violations: list[RuleViolation] = field(default_factory=list)

    def fail(self, path: str, message: str) -> None:
        self.violations.append(RuleViolation(path, message))

    # --- generic value checks -------------------------------------------------------------

    def container(self, value: Any, path: str, kind: str) -> Mapping[str, Any] | None:
        """``value`` as a mapping (an empty element, ``""``/``None``, is an empty one), or
        ``None`` when it is no container: reported once, its children are not checked."""
        if value is None or value == "":
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, "must be a container (an object)")
            return None
        for key in value:
            if key not in _KNOWN[kind]:
                self.fail(_join(path, str(key)), "unknown field")
        return value

    def text(self, value: Any, path: str) -> str | None:
        """``value`` as text; ``None`` when absent or of a type XML cannot carry."""
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self.fail(path, "must be a string")
        return None

    def required(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = self.text(parent.get(key), path)
        if not value:
            self.fail(path, "is required")
            return None
        return value

    def one_of(self, value: str | None, allowed: tuple[str, ...], path: str) -> str | None:
        if value is None:
            return None
        if value not in allowed:
            self.fail(path, f"must be one of {', '.join(allowed)} (got {value!r})")
            return None
        return value

    def pattern(self, value: str | None, regex: re.Pattern[str], path: str, shape: str) -> None:
        if value is not None and not regex.fullmatch(value):
            self.fail(path, f"must be {shape} (got {value!r})")

    # --- the request ----------------------------------------------------------------------

    def request(self, request: Mapping[str, Any]) -> None:
        root = self.container(request, "Request", "")
        if root is None:
            return
        tag = self.required(root, "Tag", "Tag")
        if tag is not None and tag != TAG:
            self.fail("Tag", f"must be {TAG} (got {tag!r})")
        if "Input" not in root:
            self.fail("Input", "is required")
        elif (source := self.container(root["Input"], "Input", "Input")) is not None:
            self.required(source, "Object", "Input.Object")
        self.operations(root.get("Operation"))
        queue_id = self.text(root.get("QueueId"), "QueueId")
        self.pattern(queue_id, _QUEUE_ID, "QueueId", "'p' followed by 32 lowercase hex digits")
        if "QueueType" in root:
            self.required(root, "QueueType", "QueueType")
        self.callback(root)

    def operations(self, value: Any) -> None:
        if value is None or value == "" or value == []:
            self.fail("Operation", "is required")
            return
        if not isinstance(value, list):
            self.operation(value, "Operation")
            return
        if len(value) > MAX_OPERATIONS:
            self.fail("Operation", f"at most {MAX_OPERATIONS} operations (got {len(value)})")
        for index, item in enumerate(value):
            self.operation(item, f"Operation[{index}]")

    def operation(self, value: Any, path: str) -> None:
        op = self.container(value, path, "Operation")
        if op is None:
            return
        template_id = self.text(op.get("TemplateId"), f"{path}.TemplateId")
        self.pattern(
            template_id, _TEMPLATE_ID, f"{path}.TemplateId", "'t' followed by 1-64 letters/digits"
        )
        if "TemplateId" not in op and "VoiceSeparate" not in op:
            self.fail(f"{path}.TemplateId", "TemplateId or VoiceSeparate is required")
        if "VoiceSeparate" in op:
            # TemplateId wins: CI ignores inline parameters then, so their co-constraints too.
            self.voice_separate(
                op["VoiceSeparate"], f"{path}.VoiceSeparate", "TemplateId" not in op
            )
        if "Output" not in op:
            self.fail(f"{path}.Output", "is required")
        else:
            self.output(op["Output"], f"{path}.Output")
        self.user_data(op.get("UserData"), f"{path}.UserData")
        self.one_of(
            self.text(op.get("JobLevel"), f"{path}.JobLevel"), JOB_LEVELS, f"{path}.JobLevel"
        )

    def voice_separate(self, value: Any, path: str, effective: bool) -> None:
        vs = self.container(value, path, "VoiceSeparate")
        if vs is None:
            return
        mode = self.one_of(
            self.text(vs.get("AudioMode"), f"{path}.AudioMode"), AUDIO_MODES, f"{path}.AudioMode"
        )
        config = self.container(vs.get("AudioConfig"), f"{path}.AudioConfig", "AudioConfig")
        if config is None:
            return
        values = self.audio_config(config, f"{path}.AudioConfig")
        if effective and values is not None:
            self.audio_matrix(mode, values, f"{path}.AudioConfig")

    def audio_config(self, config: Mapping[str, Any], path: str) -> dict[str, str | None] | None:
        """Single-field checks. Returns the values for the codec matrix, with a field that
        failed its own check left out of it (so every field is still judged, once), or
        ``None`` when the codec itself is unusable."""
        values = {key: self.text(config.get(key), f"{path}.{key}") for key in AUDIO_CONFIG_KEYS}
        allowed = {"Codec": CODECS, "Samplerate": SAMPLERATES, "Channels": CHANNELS}
        usable: dict[str, str | None] = {}
        for key, choices in allowed.items():
            before = len(self.violations)
            self.one_of(values[key], choices, f"{path}.{key}")
            usable[key] = values[key] if len(self.violations) == before else _SKIP
        self.bitrate(values["Bitrate"], f"{path}.Bitrate")
        return None if usable["Codec"] == _SKIP else usable

    def bitrate(self, value: str | None, path: str) -> None:
        low, high = BITRATE_RANGE
        if value is not None and not (_DIGITS.fullmatch(value) and low <= int(value) <= high):
            self.fail(path, f"must be an integer from {low} to {high} kbps (got {value!r})")

    def audio_matrix(self, mode: str | None, values: Mapping[str, str | None], path: str) -> None:
        """Spec §2.4: which codec allows which samplerates and channels, per AudioMode."""
        codec = values["Codec"] or DEFAULT_CODEC
        if mode == MUSIC_MODE:
            if codec not in MUSIC_MODE_CODECS:
                allowed = ", ".join(MUSIC_MODE_CODECS)
                self.fail(f"{path}.Codec", f"with AudioMode MusicMode must be one of {allowed}")
            return  # MusicMode ignores Samplerate, Bitrate and Channels
        if codec not in MATRIX:
            self.fail(f"{path}.Codec", f"{codec} is only allowed with AudioMode MusicMode")
            return
        rates, channels = MATRIX[codec]
        rate = values["Samplerate"]
        if rate is None and DEFAULT_SAMPLERATE not in rates:  # _SKIP: already reported
            self.fail(
                f"{path}.Samplerate",
                f"{codec} needs Samplerate {', '.join(rates)}; the default "
                f"{DEFAULT_SAMPLERATE} is not allowed",
            )
        elif rate not in (None, _SKIP) and rate not in rates:
            self.fail(f"{path}.Samplerate", f"{codec} allows {', '.join(rates)} (got {rate})")
        channel = values["Channels"]
        if channel not in (None, _SKIP) and channel not in channels:
            self.fail(f"{path}.Channels", f"{codec} allows {', '.join(channels)} (got {channel})")

    def output(self, value: Any, path: str) -> None:
        out = self.container(value, path, "Output")
        if out is None:
            return
        region = self.required(out, "Region", f"{path}.Region")
        self.pattern(region, _REGION, f"{path}.Region", "a region such as ap-guangzhou")
        bucket = self.required(out, "Bucket", f"{path}.Bucket")
        self.pattern(bucket, _BUCKET, f"{path}.Bucket", "a bucket name-APPID")
        texts = {key: self.text(out.get(key), f"{path}.{key}") for key in ("Object", "AuObject")}
        for key in ("BassObject", "DrumObject"):
            self.text(out.get(key), f"{path}.{key}")
        if not any(texts.values()):
            self.fail(f"{path}.Object", "Object and AuObject must not both be empty")

    def user_data(self, value: Any, path: str) -> None:
        text = self.text(value, path)
        if text is None:
            return
        if len(text) > MAX_USER_DATA:
            self.fail(path, f"at most {MAX_USER_DATA} characters (got {len(text)})")
        if not _PRINTABLE_ASCII.fullmatch(text):
            self.fail(path, "printable ASCII only")

    def callback(self, root: Mapping[str, Any]) -> None:
        url = self.text(root.get("CallBack"), "CallBack")
        if url is not None and url != "no" and not _is_http_url(url):
            self.fail("CallBack", "must be an http(s) URL or the literal 'no'")
        self.one_of(
            self.text(root.get("CallBackFormat"), "CallBackFormat"),
            CALLBACK_FORMATS,
            "CallBackFormat",
        )
        kind = self.one_of(
            self.text(root.get("CallBackType"), "CallBackType"), CALLBACK_TYPES, "CallBackType"
        )
        if "CallBackMqConfig" in root:
            self.mq_config(root["CallBackMqConfig"])
        elif kind == "TDMQ":
            self.fail("CallBackMqConfig", "is required when CallBackType is TDMQ")
        if "CallBackKafkaConfig" in root:
            self.kafka_config(root["CallBackKafkaConfig"])

    def mq_config(self, value: Any) -> None:
        mq = self.container(value, "CallBackMqConfig", "CallBackMqConfig")
        if mq is None:
            return
        path = "CallBackMqConfig"
        self.one_of(
            self.required(mq, "MqRegion", f"{path}.MqRegion"), MQ_REGIONS, f"{path}.MqRegion"
        )
        self.one_of(self.required(mq, "MqMode", f"{path}.MqMode"), MQ_MODES, f"{path}.MqMode")
        self.required(mq, "MqName", f"{path}.MqName")

    def kafka_config(self, value: Any) -> None:
        """SDK-only (Go/Java, spec §2.1): accepted, all three fields required."""
        kafka = self.container(value, "CallBackKafkaConfig", "CallBackKafkaConfig")
        if kafka is None:
            return
        for key in ("Region", "InstanceId", "Topic"):
            self.required(kafka, key, f"CallBackKafkaConfig.{key}")


#: marks an AudioConfig value that failed its own check: the matrix does not judge it again
_SKIP = "\x00invalid"


def _join(path: str, key: str) -> str:
    return key if path == "Request" else f"{path}.{key}"


def _is_http_url(text: str) -> bool:
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
