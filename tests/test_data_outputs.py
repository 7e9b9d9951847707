"""Outputs never land on an input or on each other, and are written whole or not at all."""

import os

import pytest

from cte_kit.data.outputs import atomic_path, check_outputs


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"pixels")
    (tmp_path / "bank.yaml").write_text("models: []\n")
    (tmp_path / "weights.pt").write_bytes(b"weights")
    return {"the bank file": tmp_path / "bank.yaml", "the images folder": tmp_path / "images",
            "the weights of model 'a'": tmp_path / "weights.pt", "the labels folder": None}


def test_outputs_that_would_overwrite_an_input_are_refused(tmp_path, inputs):
    check_outputs(inputs, files={"--summary": tmp_path / "summary.json", "--plot": None},
                  folders={"--out": tmp_path / "new"})
    cases = [({"--summary": tmp_path / "bank.yaml"}, {}, "--summary .* is the bank file"),
             ({"--export": tmp_path / "images" / "a.tif"}, {}, "--export .* lies inside the images folder"),
             ({"--plot": tmp_path / "images" / "scatter.png"}, {}, "--plot .* lies inside the images folder"),
             ({"--out": tmp_path / "sub" / ".." / "weights.pt"}, {}, "is the weights of model 'a'"),
             ({"--out": tmp_path / "r.sqlite", "--summary": tmp_path / "r.sqlite"}, {}, "--summary and --out are the same"),
             ({"--summary": tmp_path / "images"}, {}, "is a folder; give the name of a file"),
             ({}, {"--out": tmp_path / "bank.yaml"}, "--out .* is a file; give a folder"),
             ({}, {"--out": tmp_path / "images"}, "--out .* is the images folder"),
             ({"--summary": tmp_path / "bank.yaml" / "s.json"}, {}, "cannot be written: .*bank.yaml is a file")]
    for files, folders, message in cases:
        with pytest.raises(ValueError, match=message):
            check_outputs(inputs, files=files, folders=folders)
    # the same file under another name: a symbolic link, a hard link
    os.symlink(tmp_path / "bank.yaml", tmp_path / "link.yaml")
    os.link(tmp_path / "weights.pt", tmp_path / "hard.pt")
    for name in ("link.yaml", "hard.pt"):
        with pytest.raises(ValueError, match="which this command reads"):
            check_outputs(inputs, files={"--export": tmp_path / name})


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "out" / "summary.json"
    with atomic_path(path) as partial:
        assert partial.parent == path.parent and partial.suffix == ".json"
        partial.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as partial:
            partial.write_text("half of the sec")
            raise KeyboardInterrupt
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
