"""What a finished VoiceSeparate job produced: output keys, their MD5s and the MediaInfo.

Two modes:

* **synthetic** (always available): no audio is touched; the MD5s are stable digests of
  ``(JobId, key)``, and the MediaInfo is what CI's ffprobe would plausibly report for the
  requested Codec/Samplerate/Channels/Bitrate, with a duration derived from the input key.
* **real** (when ``data_dir/<bucket>/<object>`` is a PCM WAV file): a mid/side split with the
  standard library only, vocals = (L+R)/2 and background = (L-R)/2 (a mono input gives
  itself as vocals and silence as background; bass and drums, MusicMode only, are the mid
  and side again). Outputs are written as PCM WAV under ``data_dir/<output bucket>/<key>``
  whatever Codec was asked for, so ``${ext}`` resolves to ``wav``; there is no resampling,
  the input's rate is kept. The MD5s and the MediaInfo are those of the written files.

Every number in a MediaInfo is a string, as CI sends them (``"192.000000"``).
"""

from __future__ import annotations

import hashlib
import io
import operator
import wave
from array import array
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

#: what each output role is called in Request.Operation.Output
ROLE_KEYS: dict[str, str] = {
    "vocals": "AuObject",
    "background": "Object",
    "bass": "BassObject",
    "drums": "DrumObject",
}

#: the roles each AudioMode produces (spec §2.4; MusicMode adds bass and drums)
MODE_ROLES: dict[str, tuple[str, ...]] = {
    "IsAudio": ("vocals",),
    "IsBackground": ("background",),
    "AudioAndBackground": ("vocals", "background"),
    "MusicMode": ("vocals", "background", "bass", "drums"),
}


@dataclass(frozen=True)
class CodecInfo:
    ext: str
    format_name: str
    format_long_name: str
    codec_name: str
    codec_long_name: str
    codec_tag: str
    codec_tag_string: str
    sample_fmt: str
    default_bitrate: float  # kbps


CODECS: dict[str, CodecInfo] = {
    "aac": CodecInfo(
        "m4a",
        "mov,mp4,m4a,3gp,3g2,mj2",
        "QuickTime / MOV",
        "aac",
        "AAC (Advanced Audio Coding)",
        "0x6134706d",
        "mp4a",
        "fltp",
        128.0,
    ),
    "mp3": CodecInfo(
        "mp3",
        "mp3",
        "MP2/3 (MPEG audio layer 2/3)",
        "mp3",
        "MP3 (MPEG audio layer 3)",
        "0x0000",
        "[0][0][0][0]",
        "fltp",
        128.0,
    ),
    "flac": CodecInfo(
        "flac",
        "flac",
        "raw FLAC",
        "flac",
        "FLAC (Free Lossless Audio Codec)",
        "0x0000",
        "[0][0][0][0]",
        "s16",
        900.0,
    ),
    "amr": CodecInfo(
        "amr",
        "amr",
        "3GPP AMR",
        "amrnb",
        "AMR-NB (Adaptive Multi-Rate NarrowBand)",
        "0x0000",
        "[0][0][0][0]",
        "s16",
        12.2,
    ),
    "wav": CodecInfo(
        "wav",
        "wav",
        "WAV / WAVE (Waveform Audio)",
        "pcm_s16le",
        "PCM signed 16-bit little-endian",
        "0x0001",
        "[1][0][0][0]",
        "s16",
        1411.2,
    ),
}

CHANNEL_LAYOUTS = {1: "mono", 2: "stereo", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}


@dataclass(frozen=True)
class AudioParams:
    """The effective output parameters of a job (request values or CI's defaults)."""

    codec: str = "aac"
    samplerate: int = 44100
    channels: int = 2
    bitrate: float | None = None

    @property
    def info(self) -> CodecInfo:
        return CODECS.get(self.codec, CODECS["aac"])


@dataclass(frozen=True)
class OutputTarget:
    role: str  # vocals, background, bass, drums
    bucket: str
    key: str  # resolved: no ${ext} / ${jobid} left


@dataclass(frozen=True)
class Produced:
    """The MediaResult and MediaInfo of a finished job, as JobsDetail trees."""

    files: tuple[tuple[str, str], ...]  # (key, md5)
    media_info: dict[str, Any]
    real: bool = False


class MediaError(Exception):
    """The input could not be processed; ``code``/``message`` go into JobsDetail."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def extension_for(params: AudioParams, *, real: bool) -> str:
    return "wav" if real else params.info.ext


def roles_for(audio_mode: str, output: dict[str, str]) -> list[str]:
    """The roles to produce: those the mode asks for that have a key, else every keyed one."""
    keyed = [role for role, name in ROLE_KEYS.items() if output.get(name)]
    wanted = [r for r in MODE_ROLES.get(audio_mode, MODE_ROLES["AudioAndBackground"]) if r in keyed]
    return wanted or keyed


def real_input(data_dir: Path | None, bucket: str, key: str) -> Path | None:
    """The local file standing for ``bucket/key`` when it is a readable WAV, else ``None``."""
    if data_dir is None:
        return None
    path = _inside(data_dir, bucket, key)
    if path is None or not path.is_file():
        return None
    try:
        with wave.open(str(path), "rb") as w:
            w.getparams()
    except (wave.Error, EOFError, OSError):
        return None
    return path


def synthesize(
    job_id: str, input_key: str, targets: list[OutputTarget], params: AudioParams
) -> Produced:
    """Plausible results without audio: stable MD5s and a MediaInfo for the asked codec."""
    seed = int(hashlib.sha256(input_key.encode()).hexdigest()[:8], 16)
    duration = 30.0 + (seed % 2400) / 10.0
    bitrate = params.bitrate if params.bitrate is not None else params.info.default_bitrate
    size = int(bitrate * 1000 / 8 * duration)
    files = tuple(
        (t.key, hashlib.md5(f"{job_id}/{t.bucket}/{t.key}".encode()).hexdigest())  # noqa: S324
        for t in targets
    )
    streams = [
        _audio_stream(params.info, params.samplerate, params.channels, duration, bitrate, i == 0)
        for i in range(len(targets))
    ]
    return Produced(files, _media_info(params.info, duration, size, bitrate, streams))


def separate(source: Path, data_dir: Path, targets: list[OutputTarget], channels: int) -> Produced:
    """Mid/side split of the WAV at ``source`` into each target, written under ``data_dir``.

    ``channels`` (1 or 2; anything else becomes 2) is the channel count of the outputs: the
    mono mid or side signal, duplicated for stereo.
    """
    try:
        with wave.open(str(source), "rb") as w:
            params = w.getparams()
            frames = w.readframes(params.nframes)
    except (wave.Error, EOFError, OSError) as exc:
        raise MediaError(
            "1011", f"InvalidContent: input is not a readable WAV file: {exc}"
        ) from exc
    if params.sampwidth not in (1, 2, 3, 4):
        raise MediaError("1011", f"InvalidContent: unsupported sample width {params.sampwidth}")
    samples = _decode(frames, params.sampwidth)
    mid, side = _mid_side(samples, params.nchannels)
    out_channels = 1 if channels == 1 else 2
    signals = {"vocals": mid, "background": side, "bass": mid, "drums": side}
    files: list[tuple[str, str]] = []
    streams: list[dict[str, str]] = []
    info = CODECS["wav"]
    duration = params.nframes / params.framerate if params.framerate else 0.0
    first_size = 0
    for index, target in enumerate(targets):
        path = _inside(data_dir, target.bucket, target.key)
        if path is None:
            raise MediaError("1015", f"InvalidArgument: output key {target.key!r} is not allowed")
        data = _encode_wav(signals[target.role], params.sampwidth, params.framerate, out_channels)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append((target.key, hashlib.md5(data).hexdigest()))  # noqa: S324 - CI's Md5Info
        bitrate = params.framerate * params.sampwidth * 8 * out_channels / 1000
        streams.append(
            _audio_stream(info, params.framerate, out_channels, duration, bitrate, index == 0)
            | {"SampleFmt": _SAMPLE_FMT[params.sampwidth]}
        )
        if index == 0:
            first_size = len(data)
    format_bitrate = first_size * 8 / 1000 / duration if duration else 0.0
    media_info = _media_info(info, duration, first_size, format_bitrate, streams)
    return Produced(tuple(files), media_info, real=True)


# --- MediaInfo trees ----------------------------------------------------------------------

_SAMPLE_FMT = {1: "u8", 2: "s16", 3: "s32", 4: "s32"}


def _num(value: float) -> str:
    return f"{value:.6f}"


def _audio_stream(
    info: CodecInfo, rate: int, channels: int, duration: float, bitrate: float, first: bool
) -> dict[str, str]:
    stream = {
        "Bitrate": _num(bitrate),
        "Channel": str(channels),
        "ChannelLayout": CHANNEL_LAYOUTS.get(channels, f"{channels} channels"),
        "CodecLongName": info.codec_long_name,
        "CodecName": info.codec_name,
        "CodecTag": info.codec_tag,
        "CodecTagString": info.codec_tag_string,
        "CodecTimeBase": f"1/{rate}",
        "Duration": _num(duration),
        "Index": "0",
        "SampleFmt": info.sample_fmt,
        "SampleRate": str(rate),
        "StartTime": _num(0.0),
        "Timebase": f"1/{rate}",
    }
    if first:
        stream["Language"] = "und"
    return stream


def _media_info(
    info: CodecInfo, duration: float, size: int, bitrate: float, streams: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "Format": {
            "Bitrate": _num(bitrate),
            "Duration": _num(duration),
            "FormatLongName": info.format_long_name,
            "FormatName": info.format_name,
            "NumProgram": "0",
            "NumStream": "1",
            "Size": str(size),
            "StartTime": _num(0.0),
        },
        "Stream": {"Audio": list(streams), "Subtitle": "", "Video": ""},
    }


# --- PCM ----------------------------------------------------------------------------------


def _inside(data_dir: Path, bucket: str, key: str) -> Path | None:
    """``data_dir/bucket/key``, or ``None`` when the key would leave the bucket folder."""
    root = (data_dir / bucket).resolve()
    path = (root / key.lstrip("/")).resolve()
    return path if path.is_relative_to(root) and path != root else None


def _decode(frames: bytes, width: int) -> array[int]:
    """Interleaved PCM bytes -> signed ints (8-bit WAV is unsigned, offset 128)."""
    if width == 1:
        return array("i", map(operator.sub, frames, repeat(128)))
    if width == 2:
        return array("h", frames)
    if width == 4:
        return array("i", frames)
    # 24-bit: pad each sample to 32 bits (low byte zero), then shift back down
    padded = bytearray(len(frames) // 3 * 4)
    padded[1::4] = frames[0::3]
    padded[2::4] = frames[1::3]
    padded[3::4] = frames[2::3]
    return array("i", map(operator.rshift, array("i", bytes(padded)), repeat(8)))


def _mid_side(samples: array[int], channels: int) -> tuple[array[int], array[int]]:
    if channels == 1:
        return samples, array(samples.typecode, bytes(len(samples) * samples.itemsize))
    left, right = samples[0::channels], samples[1::channels]
    mid = array("q", map(operator.rshift, map(operator.add, left, right), repeat(1)))
    side = array("q", map(operator.rshift, map(operator.sub, left, right), repeat(1)))
    return mid, side


def _encode_wav(signal: array[int], width: int, rate: int, channels: int) -> bytes:
    if width == 1:
        raw = bytes(map(operator.add, signal, repeat(128)))
    elif width == 2:
        raw = array("h", signal).tobytes()
    elif width == 4:
        raw = array("i", signal).tobytes()
    else:
        wide = array("i", signal).tobytes()
        packed = bytearray(len(signal) * 3)
        packed[0::3] = wide[0::4]
        packed[1::3] = wide[1::4]
        packed[2::3] = wide[2::4]
        raw = bytes(packed)
    if channels == 2:
        doubled = bytearray(len(raw) * 2)
        for offset in range(width):
            doubled[offset :: 2 * width] = raw[offset::width]
            doubled[width + offset :: 2 * width] = raw[offset::width]
        raw = bytes(doubled)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buffer.getvalue()
