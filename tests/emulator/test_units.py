"""The emulator's parts on their own: configuration, fault switches, bodies, media."""

from __future__ import annotations

import hashlib
import io
import json
import wave
from array import array
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from app.config import ConfigError
from app.emulator import EmulatorConfig, create_emulator_app, emulator_of, jobs
from app.emulator.callbacks import broken_body, notification_body, redact_url
from app.emulator.faults import Faults, FaultSettings, FaultSettingsError
from app.emulator.media import MediaError, OutputTarget, separate
from app.notifications import parse_notification
from app.schemas import SchemaSet
from tests.emulator import BUCKET, SECRET_ID, SECRET_KEY, job_request

# --- configuration ------------------------------------------------------------------------

BASE_ENV = {"CIRELAY_CI_SECRET_ID": SECRET_ID, "CIRELAY_CI_SECRET_KEY": SECRET_KEY}


def test_from_env_defaults() -> None:
    config = EmulatorConfig.from_env(BASE_ENV)
    assert (config.secret_id, config.secret_key) == (SECRET_ID, SECRET_KEY)
    assert config.job_seconds == 2.0
    assert config.callback_retry_schedule == (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    assert config.faults == FaultSettings()
    assert SECRET_KEY not in repr(config)


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    config = EmulatorConfig.from_env(
        {
            **BASE_ENV,
            "CIRELAY_EMULATOR_JOB_SECONDS": "0.5",
            "CIRELAY_EMULATOR_CALLBACK_RETRIES": "0.1, 0.2",
            "CIRELAY_EMULATOR_CALLBACK_TIMEOUT": "3",
            "CIRELAY_EMULATOR_REGION": "ap-shanghai",
            "CIRELAY_EMULATOR_QUEUE_IDS": f"{BUCKET}=p{'a' * 32}",
            "CIRELAY_EMULATOR_QUEUE_CALLBACK_URL": "http://127.0.0.1:8080/callbacks/ci/queue/x",
            "CIRELAY_EMULATOR_QUEUE_CALLBACK_FORMAT": "JSON",
            "CIRELAY_EMULATOR_FAIL_MARKER": "broken",
            "CIRELAY_EMULATOR_DATA_DIR": str(tmp_path),
            "CIRELAY_EMULATOR_FAULTS": '{"drop": {"probability": 0.25}}',
            "CIRELAY_EMULATOR_SEED": "11",
            "CIRELAY_EMULATOR_ADMIN": "0",
        }
    )
    assert config.job_seconds == 0.5
    assert config.callback_retry_schedule == (0.1, 0.2)
    assert config.region == "ap-shanghai"
    assert config.queue_ids == {BUCKET: "p" + "a" * 32}
    assert config.queue_callback_format == "JSON"
    assert config.fail_marker == "broken"
    assert config.data_dir == tmp_path
    assert (config.faults.drop.probability, config.faults.seed) == (0.25, 11)
    assert config.admin is False


def test_from_env_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        EmulatorConfig.from_env(
            {
                "CIRELAY_EMULATOR_JOB_SECONDS": "soon",
                "CIRELAY_EMULATOR_CALLBACK_RETRIES": "1,x",
                "CIRELAY_EMULATOR_FAULTS": '{"explode": {}}',
                "CIRELAY_EMULATOR_QUEUE_IDS": f"{BUCKET}=q1",
            }
        )
    text = "\n".join(caught.value.problems)
    for name in (
        "CIRELAY_CI_SECRET_ID",
        "CIRELAY_CI_SECRET_KEY",
        "JOB_SECONDS",
        "CALLBACK_RETRIES",
        "FAULTS",
        "queue_ids",
    ):
        assert name in text


def test_no_retries_at_all() -> None:
    config = EmulatorConfig.from_env({**BASE_ENV, "CIRELAY_EMULATOR_CALLBACK_RETRIES": "none"})
    assert config.callback_retry_schedule == ()


# --- fault switches -----------------------------------------------------------------------


def test_next_n_fires_exactly_n_times() -> None:
    faults = Faults(FaultSettings().updated({"drop": {"next": 2}}))
    assert [faults.fire("drop") for _ in range(4)] == [True, True, False, False]


def test_probabilities_are_reproducible_with_a_seed() -> None:
    settings = FaultSettings().updated({"duplicate": {"probability": 0.5}, "seed": 42})
    first, second = Faults(settings), Faults(settings)
    draws = [first.fire("duplicate") for _ in range(50)]
    assert draws == [second.fire("duplicate") for _ in range(50)]
    assert 5 < sum(draws) < 45


def test_update_restarts_only_the_named_counters() -> None:
    faults = Faults(FaultSettings().updated({"drop": {"next": 1}, "delay": {"next": 1}}))
    faults.fire("drop")
    faults.update({"delay": {"next": 3}})
    remaining = faults.status()["remaining"]
    assert (remaining["drop"], remaining["delay"]) == (0, 3)


@pytest.mark.parametrize(
    "changes",
    [
        {"duplicate": {"copies": 1}},
        {"reorder": {"batch": 1}},
        {"malformed": {"kind": "garbled"}},
        {"create_timeout": {"creates_job": "yes"}},
        {"delay": {"seconds": -1}},
    ],
)
def test_bad_fault_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(FaultSettingsError):
        FaultSettings().updated(changes)


# --- bodies -------------------------------------------------------------------------------

DETAIL = {
    "Code": "Success",
    "JobId": "j" + "1" * 32,
    "Message": "",
    "Operation": {
        "MediaResult": {
            "OutputFile": {"Bucket": BUCKET, "ObjectName": ["a.mp3"], "ObjectPrefix": ""}
        },
        "Output": {"Bucket": BUCKET, "Object": "a.mp3", "Region": "ap-guangzhou"},
    },
    "State": "Success",
}


def test_json_body_has_strings_arrays_and_no_empties() -> None:
    document = json.loads(notification_body(DETAIL, "JSON"))
    assert document["EventName"] == "TaskFinish"
    [detail] = document["JobsDetail"]
    assert "Message" not in detail
    assert detail["Operation"]["MediaResult"]["OutputFile"] == {
        "Bucket": BUCKET,
        "ObjectName": ["a.mp3"],
    }


def test_xml_body_keeps_empty_elements() -> None:
    root = etree.fromstring(notification_body(DETAIL, "XML"))
    assert root.tag == "Response"
    message = root.find("JobsDetail/Message")
    assert message is not None and message.text is None


def test_broken_bodies() -> None:
    good = notification_body(DETAIL, "XML")
    assert broken_body(DETAIL, "XML", "truncated") == good[: len(good) // 2]
    assert b'"State": "Finished"' in broken_body(DETAIL, "JSON", "invalid")


def test_redact_url_keeps_two_segments() -> None:
    assert redact_url("http://h:1/callbacks/ci/job/token?x=1") == "http://h:1/callbacks/ci/…"
    assert redact_url("https://hooks.example.org/ci") == "https://hooks.example.org/ci"


# --- media --------------------------------------------------------------------------------


def write_wav(path: Path, frames: list[tuple[int, ...]], width: int = 2, rate: int = 8000) -> None:
    channels = len(frames[0])
    if width == 2:
        raw = array("h", [s for frame in frames for s in frame]).tobytes()
    elif width == 1:
        raw = bytes(s + 128 for frame in frames for s in frame)
    else:
        raw = b"".join(s.to_bytes(width, "little", signed=True) for f in frames for s in f)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def read_samples(data: bytes) -> tuple[int, list[int]]:
    with wave.open(io.BytesIO(data), "rb") as w:
        width, raw = w.getsampwidth(), w.readframes(w.getnframes())
    if width == 1:
        return width, [b - 128 for b in raw]
    return width, [
        int.from_bytes(raw[i : i + width], "little", signed=True) for i in range(0, len(raw), width)
    ]


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_mid_side_split(tmp_path: Path, width: int) -> None:
    source = tmp_path / BUCKET / "in.wav"
    write_wav(source, [(100, 20), (-50, -10), (7, 7)], width=width)
    targets = [
        OutputTarget("vocals", BUCKET, "out/vocal.wav"),
        OutputTarget("background", BUCKET, "out/bgm.wav"),
    ]

    produced = separate(source, tmp_path, targets, channels=1)

    vocal = (tmp_path / BUCKET / "out/vocal.wav").read_bytes()
    bgm = (tmp_path / BUCKET / "out/bgm.wav").read_bytes()
    assert read_samples(vocal) == (width, [60, -30, 7])
    assert read_samples(bgm) == (width, [40, -20, 0])
    assert produced.files == (
        ("out/vocal.wav", hashlib.md5(vocal).hexdigest()),
        ("out/bgm.wav", hashlib.md5(bgm).hexdigest()),
    )


def test_stereo_outputs_duplicate_the_channel(tmp_path: Path) -> None:
    source = tmp_path / BUCKET / "in.wav"
    write_wav(source, [(10,), (20,)])
    separate(source, tmp_path, [OutputTarget("vocals", BUCKET, "v.wav")], channels=2)
    assert read_samples((tmp_path / BUCKET / "v.wav").read_bytes())[1] == [10, 10, 20, 20]


def test_keys_cannot_leave_the_bucket(tmp_path: Path) -> None:
    source = tmp_path / BUCKET / "in.wav"
    write_wav(source, [(1, 1)])
    with pytest.raises(MediaError):
        separate(source, tmp_path, [OutputTarget("vocals", BUCKET, "../../x.wav")], channels=1)


def test_real_media_mode_end_to_end(tmp_path: Path, schemas: SchemaSet) -> None:
    write_wav(tmp_path / BUCKET / "songs/duet.wav", [(1000, -1000), (2000, 0)] * 4000)
    config = EmulatorConfig(
        secret_id=SECRET_ID, secret_key=SECRET_KEY, job_seconds=0.01, data_dir=tmp_path
    )
    clock_now = [datetime(2024, 3, 5, tzinfo=UTC)]
    app = create_emulator_app(config, clock=lambda: clock_now[0], schemas=schemas)
    running = emulator_of(app)
    try:
        [job] = running.store.create(
            BUCKET,
            "ap-guangzhou",
            jobs.job_request_from(job_request("songs/duet.wav", callback="no")),
            clock_now[0],
        )
        clock_now[0] = clock_now[0].replace(second=1)
        running.tick(wait_for_finish=True)
        running.tick(wait_for_finish=True)
        [done], _ = running.store.get(BUCKET, [job.job_id])
    finally:
        running.stop()

    assert done.state == "Success"
    vocal = tmp_path / BUCKET / f"stems/{job.job_id}/vocal.wav"
    detail = jobs.sorted_tree(jobs.job_detail(done))
    files = detail["Operation"]["MediaResult"]["OutputFile"]["Md5Info"]
    assert files[0] == {
        "Md5": hashlib.md5(vocal.read_bytes()).hexdigest(),
        "ObjectName": f"stems/{job.job_id}/vocal.wav",
    }
    fmt = detail["Operation"]["MediaInfo"]["Format"]
    assert (fmt["Duration"], fmt["Size"]) == ("1.000000", str(vocal.stat().st_size))
    body = notification_body(detail, "XML")
    assert parse_notification(body, "application/xml", schemas).reports[0].state == "Success"
