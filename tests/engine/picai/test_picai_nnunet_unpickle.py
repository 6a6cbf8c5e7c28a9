"""nnU-Net pickles are read without general unpickling: hostile pickles are refused and never run.

The restricted unpickler (plain pickles: ``plans.pkl``, ``*.model.pkl``) and ``torch.load(weights_only=True)``
with the listed numpy globals (``*.model``) accept what nnU-Net v1 writes (dicts, OrderedDicts, numpy arrays
and scalars, as numpy 1 and numpy 2 name them, pickle protocols 2 and 4) and refuse everything else naming the
global, before anything is called: a class, ``os.system``, ``eval`` of a lambda, ``_codecs.encode`` with
another encoding. The importer turns a refusal into a message naming the fold and the file.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lesion_engine.errors import CheckpointImportError
from lesion_engine.model.picai_nnunet.checkpoint import import_picai_nnunet
from lesion_engine.model.picai_nnunet.unpickle import (
    RefusedPickleError,
    load_restricted_pickle,
    load_torch_checkpoint,
    loads_restricted,
)


class _Runs:
    """An object whose unpickling would create a file (if it were ever run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _numpy1(data: bytes) -> bytes:
    """The same pickle as numpy 1 writes it (``numpy.core`` instead of ``numpy._core``)."""
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _plans_like() -> dict[str, Any]:
    return {
        "num_modalities": 3,
        "normalization_schemes": OrderedDict([(0, "nonCT"), (1, "CT")]),
        "plans_per_stage": {
            0: {"patch_size": np.array([16, 64, 64]), "current_spacing": np.array([3.0, 0.5, 0.5])}
        },
        "intensity": {
            "mean": np.float32(1.5),
            "sd": np.float64(2.5),
            "flag": np.bool_(True),
            "n": np.int64(3),
        },
        "empty": np.zeros((0,), dtype=np.uint8),
        "text": "T2W",
        "tuple": (1, 2.0, None, b"raw"),
        "set": {1, 2},
    }


@pytest.mark.parametrize(
    ("protocol", "numpy_names"),
    # numpy 1's names are made by rewriting protocol 2's text opcodes (later protocols prefix lengths).
    [(2, "numpy1"), (2, "numpy2"), (4, "numpy2"), (pickle.HIGHEST_PROTOCOL, "numpy2")],
)
def test_what_nnunet_writes_is_read(protocol: int, numpy_names: str) -> None:
    data = pickle.dumps(_plans_like(), protocol=protocol)
    if numpy_names == "numpy1":
        data = _numpy1(data)
        assert b"numpy.core.multiarray" in data
    loaded = loads_restricted(data)
    expected = _plans_like()
    assert loaded.keys() == expected.keys()
    assert isinstance(loaded["normalization_schemes"], OrderedDict)
    stage = loaded["plans_per_stage"][0]
    np.testing.assert_array_equal(stage["patch_size"], [16, 64, 64])
    assert stage["current_spacing"].dtype == np.float64
    assert type(loaded["intensity"]["mean"]) is np.float32 and loaded["intensity"]["mean"] == np.float32(1.5)
    assert type(loaded["intensity"]["sd"]) is np.float64
    assert loaded["tuple"] == (1, 2.0, None, b"raw") and loaded["set"] == {1, 2}


HOSTILE: dict[str, bytes] = {
    "os.system": b"cos\nsystem\n(S'touch {marker}'\ntR.",
    "posix.system": b"cposix\nsystem\n(S'touch {marker}'\ntR.",
    "builtins.eval of a lambda": b'cbuiltins\neval\n(S\'lambda: open("{marker}", "w")\'\ntR.',
    "builtins.exec": b'cbuiltins\nexec\n(S\'open("{marker}", "w")\'\ntR.',
    "subprocess.Popen": b"csubprocess\nPopen\n((S'touch'\nS'{marker}'\nltR.",
    "a class": b"ctests.test_picai_nnunet_unpickle\n_Runs\n(S'{marker}'\ntR.",
    "numpy.load": b"cnumpy\nload\n(S'{marker}'\ntR.",
    "codecs other than latin-1": b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_plain_pickles_are_refused_and_never_run(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = HOSTILE[name].replace(b"{marker}", str(marker).encode())
    path = tmp_path / "plans.pkl"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError) as raised:
        load_restricted_pickle(path)
    assert not marker.exists(), f"{name} ran"
    if name != "codecs other than latin-1":
        module_name = data[1 : data.index(b"\n", data.index(b"\n") + 1)].decode().replace("\n", ".")
        assert isinstance(raised.value, RefusedPickleError)
        assert f"refused global {module_name}" in str(raised.value)


def test_a_reduce_object_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps({"plans": _Runs(marker)}, protocol=2)
    with pytest.raises(RefusedPickleError, match=r"refused global (os|posix)\.system"):
        loads_restricted(data)
    assert not marker.exists()


def test_persistent_ids_are_refused() -> None:
    buffer = io.BytesIO()

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "storage" if isinstance(obj, str) else None

    _Pickler(buffer, protocol=2).dump(["x"])
    with pytest.raises(RefusedPickleError, match="persistent id"):
        loads_restricted(buffer.getvalue())


def test_large_plain_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "plans.pkl"
    path.write_bytes(pickle.dumps(b"x" * 2048))
    with pytest.raises(ValueError, match="more than the 1024"):
        load_restricted_pickle(path, max_bytes=1024)


def _checkpoint(path: Path, extra: dict[str, Any] | None = None) -> None:
    torch.save(
        {
            "epoch": 3,
            "state_dict": OrderedDict([("w", torch.ones(2))]),
            "optimizer_state_dict": {"state": {0: {"momentum_buffer": torch.zeros(2)}}, "param_groups": []},
            "lr_scheduler_state_dict": None,
            "plot_stuff": ([0.5], [0.4], [], [np.float64(0.1), np.float32(0.2)]),
            "best_stuff": (2, np.float64(0.3), np.float64(0.4)),
            "amp_grad_scaler": {"scale": 65536.0, "growth_factor": 2.0},
            **(extra or {}),
        },
        path,
    )


def _as_numpy1(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, _numpy1(data) if item.filename.endswith("data.pkl") else data)


def test_nnunet_checkpoints_are_read_with_numpy_1_or_2_names(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "n2.model")
    _as_numpy1(tmp_path / "n2.model", tmp_path / "n1.model")
    with zipfile.ZipFile(tmp_path / "n1.model") as archive:
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert b"numpy.core.multiarray" in pickled
    for name in ("n1.model", "n2.model"):
        loaded = load_torch_checkpoint(tmp_path / name)
        assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
        assert type(loaded["plot_stuff"][3][0]) is np.float64


def test_hostile_checkpoints_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "model_best.model"
    _checkpoint(path, {"hook": _Runs(marker)})
    with pytest.raises(RefusedPickleError, match=r"refused global (os|posix)\.system"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_the_importer_names_the_fold_and_file_it_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.pkl").write_bytes(pickle.dumps({"num_modalities": 3}))
    marker = tmp_path / "ran"
    (folder / "fold_0" / "model_best.model.pkl").write_bytes(
        pickle.dumps({"plans": _Runs(marker)}, protocol=2)
    )
    _checkpoint(folder / "fold_0" / "model_best.model")
    with pytest.raises(
        CheckpointImportError, match=r"fold 0: model_best\.model\.pkl refused global (os|posix)\.system"
    ):
        import_picai_nnunet(folder, tmp_path / "out", name="x", folds=[0])
    assert not marker.exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_importer_refuses_git_lfs_pointers(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.pkl").write_bytes(pickle.dumps({"num_modalities": 3}))
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 951121\n"
    (folder / "fold_0" / "model_best.model.pkl").write_bytes(pointer)
    (folder / "fold_0" / "model_best.model").write_bytes(pointer)
    with pytest.raises(CheckpointImportError, match=r"fold 0: model_best\.model\.pkl is a git-lfs pointer"):
        import_picai_nnunet(folder, tmp_path / "out", name="x", folds=[0])
