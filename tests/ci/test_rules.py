"""The business rules of a VoiceSeparate request (spec §2): every rule, valid and invalid,
each violation naming its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from app.ci.rules import RuleViolation, check_request
from app.ci.wire import parse_request
from app.schemas import SchemaSet

CORPUS = Path(__file__).parent.parent / "corpus" / "create_request"
DELETE = object()
VS = "Operation.VoiceSeparate"
AC = "Operation.VoiceSeparate.AudioConfig"


def valid_request() -> dict[str, Any]:
    return {
        "Tag": "VoiceSeparate",
        "Input": {"Object": "songs/track-017.wav"},
        "Operation": {
            "VoiceSeparate": {
                "AudioMode": "AudioAndBackground",
                "AudioConfig": {
                    "Codec": "aac",
                    "Samplerate": "48000",
                    "Bitrate": "192",
                    "Channels": "2",
                },
            },
            "Output": {
                "Region": "ap-guangzhou",
                "Bucket": "media-1300000000",
                "Object": "stems/bgm.${ext}",
                "AuObject": "stems/vocal.${ext}",
            },
            "UserData": "order-88123",
            "JobLevel": "1",
        },
        "CallBack": "https://hooks.example.org/ci/finished",
        "CallBackFormat": "XML",
        "CallBackType": "Url",
    }


def changed(changes: dict[str, Any]) -> dict[str, Any]:
    """The valid request with each dotted path set to a value, or removed (``DELETE``)."""
    request = valid_request()
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = request
        for name in parents:
            node = node.setdefault(name, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return request


def fields(violations: list[RuleViolation]) -> list[str]:
    return [v.field for v in violations]


VALID = {
    "the-spec-example": {},
    "template-only": {"Operation.VoiceSeparate": DELETE, "Operation.TemplateId": "t1a2b3"},
    "template-wins-over-bad-matrix": {
        "Operation.TemplateId": "t1a2b3",
        f"{AC}.Codec": "amr",  # amr at 48000 Hz, 2 channels: ignored under a template
    },
    "music-mode-wav": {f"{VS}.AudioMode": "MusicMode", f"{AC}.Codec": "wav"},
    "music-mode-mp3-ignores-samplerate": {
        f"{VS}.AudioMode": "MusicMode",
        f"{AC}.Codec": "mp3",
        f"{AC}.Samplerate": "96000",
        f"{AC}.Channels": "8",
    },
    "music-mode-default-codec": {f"{VS}.AudioMode": "MusicMode", f"{VS}.AudioConfig": DELETE},
    "amr-8000-mono": {f"{AC}.Codec": "amr", f"{AC}.Samplerate": "8000", f"{AC}.Channels": "1"},
    "mp3-44100-stereo": {f"{AC}.Codec": "mp3", f"{AC}.Samplerate": "44100"},
    "flac-96000-8ch": {f"{AC}.Codec": "flac", f"{AC}.Samplerate": "96000", f"{AC}.Channels": "8"},
    "default-codec-aac-96000": {f"{AC}.Codec": DELETE, f"{AC}.Samplerate": "96000"},
    "empty-voice-separate": {f"{VS}": {}},
    "bitrate-8": {f"{AC}.Bitrate": "8"},
    "bitrate-1000-as-int": {f"{AC}.Bitrate": 1000},
    "only-au-object": {"Operation.Output.Object": DELETE},
    "only-object": {"Operation.Output.AuObject": ""},
    "userdata-1024-printable": {"Operation.UserData": "~" * 1024},
    "joblevel-0-as-int": {"Operation.JobLevel": 0},
    "callback-no": {"CallBack": "no"},
    "callback-http": {"CallBack": "http://127.0.0.1:8080/callbacks/ci/x/y"},
    "json-callback": {"CallBackFormat": "JSON"},
    "tdmq-with-config": {
        "CallBackType": "TDMQ",
        "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Topic", "MqName": "ci-done"},
    },
    "queue-id": {"QueueId": "p0f5e2a7b9c1d44e6a8b3c5d7e9f01234"},
    "no-callback-settings": {"CallBack": DELETE, "CallBackFormat": DELETE, "CallBackType": DELETE},
    "two-operations": {"Operation": [valid_request()["Operation"]] * 2},
    "sdk-only-fields": {
        "QueueType": "Speeching",
        "CallBackKafkaConfig": {"Region": "ap-guangzhou", "InstanceId": "ckafka-1", "Topic": "t"},
        "Operation.Output.BassObject": "stems/bass.${ext}",
    },
}


@pytest.mark.parametrize("changes", VALID.values(), ids=VALID.keys())
def test_valid_requests_pass(changes: dict[str, Any]) -> None:
    assert check_request(changed(changes)) == []


INVALID = {
    # root
    "tag-missing": ({"Tag": DELETE}, "Tag"),
    "tag-other": ({"Tag": "Transcode"}, "Tag"),
    "unknown-root-field": ({"Priority": "1"}, "Priority"),
    # input
    "input-missing": ({"Input": DELETE}, "Input"),
    "input-object-missing": ({"Input": {}}, "Input.Object"),
    "input-object-empty": ({"Input.Object": ""}, "Input.Object"),
    "input-not-a-container": ({"Input": ["a"]}, "Input"),
    # operation
    "operation-missing": ({"Operation": DELETE}, "Operation"),
    "seven-operations": ({"Operation": [valid_request()["Operation"]] * 7}, "Operation"),
    "neither-template-nor-params": ({f"{VS}": DELETE}, "Operation.TemplateId"),
    "template-id-shape": ({"Operation.TemplateId": "x-123"}, "Operation.TemplateId"),
    "unknown-operation-field": ({"Operation.Transcode": {}}, "Operation.Transcode"),
    # voice separate
    "audiomode-not-in-enum": ({f"{VS}.AudioMode": "Karaoke"}, f"{VS}.AudioMode"),
    "unknown-audioconfig-field": ({f"{AC}.SampleRate": "48000"}, f"{AC}.SampleRate"),
    "codec-not-in-enum": ({f"{AC}.Codec": "ogg"}, f"{AC}.Codec"),
    "codec-acc-typo": ({f"{AC}.Codec": "acc"}, f"{AC}.Codec"),
    "wav-without-music-mode": ({f"{AC}.Codec": "wav"}, f"{AC}.Codec"),
    "music-mode-flac": ({f"{VS}.AudioMode": "MusicMode", f"{AC}.Codec": "flac"}, f"{AC}.Codec"),
    "music-mode-amr": ({f"{VS}.AudioMode": "MusicMode", f"{AC}.Codec": "amr"}, f"{AC}.Codec"),
    "samplerate-not-in-enum": ({f"{AC}.Samplerate": "44000"}, f"{AC}.Samplerate"),
    "aac-8000": ({f"{AC}.Samplerate": "8000"}, f"{AC}.Samplerate"),
    "flac-8000": ({f"{AC}.Codec": "flac", f"{AC}.Samplerate": "8000"}, f"{AC}.Samplerate"),
    "mp3-96000": ({f"{AC}.Codec": "mp3", f"{AC}.Samplerate": "96000"}, f"{AC}.Samplerate"),
    "mp3-8000": ({f"{AC}.Codec": "mp3", f"{AC}.Samplerate": "8000"}, f"{AC}.Samplerate"),
    "amr-44100": (
        {f"{AC}.Codec": "amr", f"{AC}.Samplerate": "44100", f"{AC}.Channels": "1"},
        f"{AC}.Samplerate",
    ),
    "amr-default-samplerate": (
        {f"{AC}.Codec": "amr", f"{AC}.Samplerate": DELETE, f"{AC}.Channels": "1"},
        f"{AC}.Samplerate",
    ),
    "channels-not-in-enum": ({f"{AC}.Channels": "3"}, f"{AC}.Channels"),
    "mp3-4-channels": ({f"{AC}.Codec": "mp3", f"{AC}.Channels": "4"}, f"{AC}.Channels"),
    "amr-2-channels": (
        {f"{AC}.Codec": "amr", f"{AC}.Samplerate": "8000", f"{AC}.Channels": "2"},
        f"{AC}.Channels",
    ),
    "bitrate-7": ({f"{AC}.Bitrate": "7"}, f"{AC}.Bitrate"),
    "bitrate-1001": ({f"{AC}.Bitrate": "1001"}, f"{AC}.Bitrate"),
    "bitrate-not-integer": ({f"{AC}.Bitrate": "128.5"}, f"{AC}.Bitrate"),
    "bitrate-signed": ({f"{AC}.Bitrate": "+128"}, f"{AC}.Bitrate"),
    "bitrate-float-type": ({f"{AC}.Bitrate": 128.0}, f"{AC}.Bitrate"),
    # output
    "output-missing": ({"Operation.Output": DELETE}, "Operation.Output"),
    "output-region-missing": ({"Operation.Output.Region": DELETE}, "Operation.Output.Region"),
    "output-region-shape": ({"Operation.Output.Region": "Guangzhou"}, "Operation.Output.Region"),
    "output-bucket-missing": ({"Operation.Output.Bucket": ""}, "Operation.Output.Bucket"),
    "output-bucket-no-appid": ({"Operation.Output.Bucket": "media"}, "Operation.Output.Bucket"),
    "output-objects-both-empty": (
        {"Operation.Output.Object": "", "Operation.Output.AuObject": DELETE},
        "Operation.Output.Object",
    ),
    "output-unknown-field": ({"Operation.Output.Key": "x"}, "Operation.Output.Key"),
    # user data, job level
    "userdata-1025": ({"Operation.UserData": "a" * 1025}, "Operation.UserData"),
    "userdata-non-ascii": ({"Operation.UserData": "订单"}, "Operation.UserData"),
    "userdata-control-char": ({"Operation.UserData": "a\tb"}, "Operation.UserData"),
    "joblevel-3": ({"Operation.JobLevel": "3"}, "Operation.JobLevel"),
    "joblevel-padded": ({"Operation.JobLevel": "01"}, "Operation.JobLevel"),
    "joblevel-bool": ({"Operation.JobLevel": True}, "Operation.JobLevel"),
    # queue, callback
    "queueid-wrong-prefix": ({"QueueId": "q0f5e2a7b9c1d44e6a8b3c5d7e9f01234"}, "QueueId"),
    "queueid-short": ({"QueueId": "p0f5e2"}, "QueueId"),
    "queueid-uppercase": ({"QueueId": "p0F5E2A7B9C1D44E6A8B3C5D7E9F01234"}, "QueueId"),
    "callback-not-a-url": ({"CallBack": "hooks.example.org/ci"}, "CallBack"),
    "callback-ftp": ({"CallBack": "ftp://hooks.example.org/ci"}, "CallBack"),
    "callback-empty": ({"CallBack": ""}, "CallBack"),
    "callback-No": ({"CallBack": "No"}, "CallBack"),
    "callback-with-space": ({"CallBack": "https://a.example/x y"}, "CallBack"),
    "callbackformat-lowercase": ({"CallBackFormat": "json"}, "CallBackFormat"),
    "callbacktype-not-in-enum": ({"CallBackType": "Kafka"}, "CallBackType"),
    "tdmq-without-mq-config": ({"CallBackType": "TDMQ"}, "CallBackMqConfig"),
    "mqregion-not-in-enum": (
        {"CallBackMqConfig": {"MqRegion": "sz", "MqMode": "Queue", "MqName": "q"}},
        "CallBackMqConfig.MqRegion",
    ),
    "mqmode-not-in-enum": (
        {"CallBackMqConfig": {"MqRegion": "sh", "MqMode": "Fanout", "MqName": "q"}},
        "CallBackMqConfig.MqMode",
    ),
    "queuetype-empty": ({"QueueType": ""}, "QueueType"),
    "kafka-topic-missing": (
        {"CallBackKafkaConfig": {"Region": "ap-guangzhou", "InstanceId": "ckafka-1"}},
        "CallBackKafkaConfig.Topic",
    ),
    "mqconfig-not-a-container": ({"CallBackMqConfig": "sh"}, "CallBackMqConfig"),
    "mqname-missing": (
        {"CallBackMqConfig": {"MqRegion": "sh", "MqMode": "Queue"}},
        "CallBackMqConfig.MqName",
    ),
}


@pytest.mark.parametrize(("changes", "field"), INVALID.values(), ids=INVALID.keys())
def test_each_rule_names_its_field(changes: dict[str, Any], field: str) -> None:
    violations = check_request(changed(changes))
    assert fields(violations) == [field]
    assert violations[0].ci_code == "InvalidArgument"
    assert violations[0].message


def test_every_violation_is_reported_not_just_the_first() -> None:
    request = changed(
        {
            "Tag": DELETE,
            f"{AC}.Codec": "mp3",
            f"{AC}.Samplerate": "96000",
            f"{AC}.Channels": "6",
            "Operation.Output.Region": DELETE,
            "CallBackType": "TDMQ",
        }
    )
    assert fields(check_request(request)) == [
        "Tag",
        f"{AC}.Samplerate",
        f"{AC}.Channels",
        "Operation.Output.Region",
        "CallBackMqConfig",
    ]


def test_operations_in_a_list_are_named_by_index() -> None:
    bad = changed({"Operation.JobLevel": "9"})["Operation"]
    request = changed({"Operation": [valid_request()["Operation"], bad]})
    assert fields(check_request(request)) == ["Operation[1].JobLevel"]


def test_a_non_mapping_request_is_one_violation_per_required_part() -> None:
    assert fields(check_request({})) == ["Tag", "Input", "Operation"]


def test_violation_as_dict() -> None:
    violation = check_request(changed({"Tag": "x"}))[0]
    assert violation.as_dict() == {
        "field": "Tag",
        "message": "must be VoiceSeparate (got 'x')",
        "ci_code": "InvalidArgument",
    }


# --- against the corpus: the rules read what parse_request returns ------------------------

CORPUS_VALID = sorted((CORPUS / "valid").glob("*.xml"))
#: Schema-valid documents that break a co-constraint the XSD cannot express.
RULE_BREAKERS = {"template-empty-output-objects.xml": ["Operation.Output.Object"]}


@pytest.mark.parametrize("path", CORPUS_VALID, ids=lambda p: p.name)
def test_schema_valid_corpus_requests_pass_the_rules(path: Path, schemas: SchemaSet) -> None:
    document = parse_request(path.read_bytes(), schemas=schemas)
    assert fields(check_request(document)) == RULE_BREAKERS.get(path.name, [])
