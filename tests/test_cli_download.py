"""python -m sa2va download / models, and segment with a catalog name, against the fake hub (tests/fakehub.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from fakehub import FakeHub
from sa2va.hub import catalog, download
from sa2va.__main__ import main

DEFAULT_REPO = "ByteDance/Sa2VA-Qwen3-VL-4B"


@pytest.fixture
def hub(checkpoint_factory, monkeypatch):
    with FakeHub({DEFAULT_REPO: checkpoint_factory("qwen3_vl", max_shard_bytes=8 * 2**20)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def _env(hub, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "SA2VA_MODELS_DIR", "HF_TOKEN")}
    return {**env, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT), **extra}


def test_models_lists_the_catalog_with_sizes_and_presence(checkpoint_factory, tmp_path, capsys):
    shutil.copytree(checkpoint_factory("qwen3_vl"), tmp_path / "Sa2VA-Qwen3-VL-4B")
    (tmp_path / "Sa2VA-Qwen2_5-VL-7B").mkdir()
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert len(lines) == len(catalog.CATALOG)
    assert "18 GB" in lines["Sa2VA-Qwen3-VL-4B"] and "present" in lines["Sa2VA-Qwen3-VL-4B"]
    assert "partial" in lines["Sa2VA-Qwen2_5-VL-7B"]
    assert "60 GB" in lines["Sa2VA-InternVL3-14B"] and lines["Sa2VA-InternVL3-14B"].rstrip().endswith("-")


def test_download_command_completes_then_needs_no_network(hub, tmp_path, capsys):
    assert main(["download", "Sa2VA-Qwen3-VL-4B", "--models-dir", str(tmp_path)]) == 0
    folder = tmp_path / "Sa2VA-Qwen3-VL-4B"
    assert download.is_complete(folder) and f"{folder} is complete" in capsys.readouterr().out
    requests = len(hub.requests)
    assert main(["download", "Sa2VA-Qwen3-VL-4B", "--models-dir", str(tmp_path)]) == 0
    assert len(hub.requests) == requests


def test_download_command_models_dir_defaults_to_the_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(tmp_path / "env-models"))
    assert main(["download", "ByteDance/Sa2VA-Qwen3-VL-4B"]) == 0
    assert download.is_complete(tmp_path / "env-models" / "Sa2VA-Qwen3-VL-4B")


@pytest.mark.parametrize("name, words", [("Sa2VA-Unknown", "is not a model this pack can download"),
                                         ("Sa2VA-InternVL3-2B", "The hub answered 404")])
def test_download_command_errors_exit_2_with_a_message(hub, tmp_path, capsys, name, words):
    assert main(["download", name, "--models-dir", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


def _as_in_a_terminal() -> None:
    """Child setup: SIGINT at its default disposition, as in a terminal. A process started with SIGINT ignored (as
    a non-interactive shell starts a background job, e.g. `pytest ... &` or a CI runner doing so) passes that on to
    its children, and Python then installs no KeyboardInterrupt handler at all: the download would simply go on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_download_command_ctrl_c_exits_130_keeps_parts_and_the_next_run_resumes(hub, tmp_path):
    # slow enough (about 2.5 MB/s over 8 connections for 30 MB) that Ctrl-C lands mid-download even when a loaded
    # machine delays this loop by seconds
    hub.delay_per_chunk = 0.2
    cmd = [sys.executable, "-m", "sa2va", "download", "Sa2VA-Qwen3-VL-4B", "--models-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_as_in_a_terminal)
    folder = tmp_path / "Sa2VA-Qwen3-VL-4B"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if hub.cdn_bytes > 2**20:
            break
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    # the in-process cancel latency is pinned to 1 s in tests/test_download.py; the whole process (interpreter
    # start-up is long past, teardown included) exits in 0.6-2.1 s on 2 idle cores; the bound leaves room for a
    # loaded machine but not for a download that goes on (the rest of this one takes about 25 s)
    assert time.monotonic() - sent < 10.0
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    parts = list(folder.glob("*.part.json"))
    assert parts and sum(s[2] for p in parts for s in json.loads(p.read_text())["segments"]) > 0
    hub.delay_per_chunk = 0.0
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(hub), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert download.is_complete(folder) and not list(folder.glob("*.part*"))


def test_segment_alone_downloads_and_runs_the_default_model(hub, image, tmp_path):
    Image.fromarray(image).save(tmp_path / "photo.png")
    result = subprocess.run([sys.executable, "-m", "sa2va", "segment", "--image", "photo.png", "--prompt",
                             "Please segment the person.", "--max-new-tokens", "16"],
                            cwd=tmp_path, env=_env(hub), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert download.is_complete(tmp_path / "models" / "sa2va" / "Sa2VA-Qwen3-VL-4B")
    assert (tmp_path / "sa2va-out" / "answer.txt").read_text().strip() == "Sure, it is."
    assert np.asarray(Image.open(tmp_path / "sa2va-out" / "mask_0.png")).shape == (480, 640)


def test_download_command_into_an_unusable_folder_exits_2_with_one_line(hub, tmp_path, capsys):
    blocker = tmp_path / "models"
    blocker.write_text("not a folder")
    assert main(["download", "Sa2VA-Qwen3-VL-4B", "--models-dir", str(blocker / "sa2va")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest: tqdm's empty bar
    assert len(errors) == 1 and "Traceback" not in err, "one line, no traceback"
    assert errors[0].startswith("error: A file is in the way of") and f"{blocker} is a regular file" in errors[0]
