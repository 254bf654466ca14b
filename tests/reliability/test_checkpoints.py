"""Checkpoints: crafted pickles are refused without running code; damaged or foreign ones are named.

``models.load_checkpoint`` loads with ``torch.load(..., weights_only=True)``; these tests
show what that buys and what the checks around it add (the checkpoint of the other model,
a truncated file, wrong entries, non-finite weights).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepadversaries.errors import DeepAdvError
from deepadversaries.models.networks import build_model, model_from_checkpoint

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def convnet_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": "convnet", "state_dict": build_model("convnet").state_dict(), "epoch": 3,
                "val_acc": 0.5}, path)
    return path


class Payload:
    """Unpickling this runs ``os.system``-like code: here it only creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(DeepAdvError) as info:
        model_from_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle.dumps", "inside a state_dict"])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, convnet_checkpoint, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    if how == "torch.save":  # a torch zip archive whose data.pkl calls Path.write_text
        torch.save({"model": "convnet", "state_dict": {}, "payload": Payload(marker)}, path)
    elif how == "pickle.dumps":  # a bare (legacy-format) pickle
        path.write_bytes(pickle.dumps({"model": "convnet", "state_dict": Payload(marker)}))
    else:  # valid weights with one object smuggled in next to them
        ckpt = torch.load(convnet_checkpoint, weights_only=True)
        ckpt["state_dict"]["extra"] = Payload(marker)
        torch.save(ckpt, path)
    refused(path, "not a valid checkpoint", "UnpicklingError")
    assert not marker.exists(), "the crafted pickle ran code"


def test_crafted_pickle_in_a_run_folder_is_refused_by_load_model(tmp_path):
    from deepadversaries.models.networks import load_model
    from deepadversaries.models.runs import best_checkpoint_path

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"kind": "deepadv-run", "model": "convnet", "method": "regular", '
                                     f'"data": "{tmp_path}", "seed": 0}}')
    marker = tmp_path / "pwned"
    best_checkpoint_path(run).parent.mkdir()
    torch.save({"model": "convnet", "state_dict": Payload(marker)}, best_checkpoint_path(run))
    with pytest.raises(DeepAdvError, match="best.pt: not a valid checkpoint"):
        load_model(run)
    assert not marker.exists()


def test_checkpoint_of_the_other_model(tmp_path, convnet_checkpoint):
    refused_expect = pytest.raises(DeepAdvError, match="checkpoint holds a convnet but the run is a resnet18")
    with refused_expect:
        model_from_checkpoint(convnet_checkpoint, expected_model="resnet18")
    # the weights of one architecture under the other's name
    path = tmp_path / "best.pt"
    ckpt = torch.load(convnet_checkpoint, weights_only=True)
    torch.save({**ckpt, "model": "resnet18"}, path)
    refused(path, "weights do not fit a resnet18")


@SETTINGS
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_checkpoint(convnet_checkpoint, tmp_path, fraction):
    path = tmp_path / "cut.pt"
    data = convnet_checkpoint.read_bytes()
    path.write_bytes(data[: int(fraction * len(data))])
    refused(path, "not a valid checkpoint")


ENTRY = st.one_of(st.none(), st.integers(), st.text(max_size=6), st.lists(st.integers(), max_size=2),
                  st.builds(lambda n: torch.zeros(n), st.integers(0, 3)))


@SETTINGS
@given(model=st.one_of(st.sampled_from(["convnet", "resnet18", "ConvNet", ""]), ENTRY),
       drop=st.sets(st.sampled_from(["model", "state_dict"])),
       state=st.sampled_from(["keep", "missing-key", "extra-key", "wrong-shape", "not-a-tensor",
                              "nan", "not-a-dict", "empty"]))
def test_checkpoints_with_wrong_entries(convnet_checkpoint, tmp_path, model, drop, state):
    ckpt = torch.load(convnet_checkpoint, weights_only=True)
    sd = dict(ckpt["state_dict"])
    first = next(iter(sd))
    if state == "missing-key":
        sd.pop(first)
    elif state == "extra-key":
        sd["surplus.weight"] = torch.zeros(2)
    elif state == "wrong-shape":
        sd[first] = torch.zeros(1, 2, 3)
    elif state == "not-a-tensor":
        sd[first] = 3
    elif state == "nan":
        sd[first] = torch.full_like(sd[first], float("nan"))
    elif state == "not-a-dict":
        sd = [1, 2]
    elif state == "empty":
        sd = {}
    ckpt = {**ckpt, "model": model, "state_dict": sd}
    for key in drop:
        ckpt.pop(key)
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    if model == "convnet" and not drop and state == "keep":
        net = model_from_checkpoint(path)
        logits, z = net(torch.rand(2, 3, 100, 100))
        assert torch.isfinite(logits).all()
        return
    refused(path)


def test_not_a_checkpoint_at_all(tmp_path):
    for name, data in [("empty.pt", b""), ("text.pt", b"hello"), ("zip.pt", _zip_of_junk())]:
        path = tmp_path / name
        path.write_bytes(data)
        refused(path, "not a valid checkpoint")
    refused(tmp_path / "absent.pt", "checkpoint not found")
    os.mkdir(tmp_path / "dir.pt")
    refused(tmp_path / "dir.pt", "checkpoint not found")


def _zip_of_junk() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x04junk")
    return buf.getvalue()
