"""The command line under hostile input: a catalogue of malformed images, labels, banks, sweep configs,
options and result stores.

Every case must exit with 2 (bad input), say in one line which file or setting is wrong, print no
traceback, and change nothing that an earlier run wrote: the result store, the bank and the images
keep their checksums. The catalogue runs in-process on three 64 px images and one shipped demo U-Net.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cte_kit.cli import main
from cte_kit.data.synthetic import DEMO_TARGET, generate

BANK = "models:\n  - name: near_target\n    kind: unet\n    pretrained: demo/near_target\n"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A target folder pair, a bank and the result store of one complete rank."""
    root = tmp_path_factory.mktemp("hostile")
    data = generate(DEMO_TARGET, 3, shape=(64, 64), seed=5)
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    for name, image, labels in zip(data.names, data.images, data.labels):
        tifffile.imwrite(root / "images" / f"{name}.tif", image, compression="zlib")
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels.astype(np.uint16))
    (root / "bank.yaml").write_text(BANK)
    store = root / "results.sqlite"
    assert main(_rank(root, "--labels", str(root / "labels"))) == 0
    return root, store


def _rank(root: Path, *extra: str, images: Path | None = None, bank: Path | None = None, out: Path | None = None):
    return ["rank", "--bank", str(bank or root / "bank.yaml"), "--images", str(images or root / "images"),
            "--out", str(out or root / "results.sqlite"), "--no-progress", *extra]


def _checksums(*paths: Path) -> dict:
    found = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found.update({file: hashlib.sha256(file.read_bytes()).hexdigest() for file in files})
    return found


def _first_image(root: Path) -> np.ndarray:
    return tifffile.imread(sorted((root / "images").iterdir())[0])


# -- the catalogue: (case, what it writes into its own folder, then the argv) -------------------------------
def _image_case(name: str, write):
    """Images folder of one malformed file."""
    def make(root: Path, case: Path):
        (case / "images").mkdir()
        write(case / "images", _first_image(root))
        return _rank(root, images=case / "images")
    return make


def _labels_case(write):
    """The good images with a labels folder whose first file is malformed (the others copied)."""
    def make(root: Path, case: Path):
        shutil.copytree(root / "labels", case / "labels")
        first = sorted((case / "labels").iterdir())[0]
        first.unlink()
        write(first, tifffile.imread(root / "labels" / first.name))
        return _rank(root, "--labels", str(case / "labels"))
    return make


def _bank_case(text: str):
    def make(root: Path, case: Path):
        (case / "bank.yaml").write_text(text)
        return _rank(root, bank=case / "bank.yaml")
    return make


def _option_case(*extra: str):
    def make(root: Path, case: Path):
        return _rank(root, *(value.format(case=case) for value in extra))
    return make


def _sweep_case(text: str):
    def make(root: Path, case: Path):
        (case / "sweep.yaml").write_text(text.format(root=root))
        return ["sweep", str(case / "sweep.yaml"), "--out", str(root / "results.sqlite"), "--no-progress"]
    return make


def _store_case(write):
    """An --out that is not a store this kit can write; the file itself must stay as it was."""
    def make(root: Path, case: Path):
        write(case / "store.sqlite", root / "results.sqlite")
        return _rank(root, out=case / "store.sqlite")
    return make


def _truncated(folder: Path, image: np.ndarray, suffix: str, **options):
    path = folder / f"bad{suffix}"
    if suffix == ".png":
        import imageio.v3 as iio

        iio.imwrite(path, (image // 256).astype(np.uint8))
    else:
        tifffile.imwrite(path, image, **options)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])


def _corrupt_copy(path: Path, good: Path):
    data = bytearray(good.read_bytes())
    data[len(data) // 4:] = b"\xa5" * (len(data) - len(data) // 4)
    path.write_bytes(bytes(data))


def _sql(path: Path, statement: str):
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(statement)
    finally:
        db.close()  # a connection left open would finish its write-ahead log later


def _foreign_sqlite(path: Path, good: Path):
    _sql(path, "CREATE TABLE patients (id INTEGER)")


def _newer_schema(path: Path, good: Path):
    shutil.copy(good, path)
    _sql(path, "UPDATE meta SET value = '99' WHERE key = 'schema'")


SWEEP = "bank: {root}/bank.yaml\ntargets:\n  - name: t\n    images: {root}/images\n"

CATALOGUE = {
    # images
    "truncated deflate tiff": (_image_case("bad", lambda f, im: _truncated(f, im, ".tif", compression="zlib")),
                               r"cannot read .*bad\.tif"),
    "truncated png": (_image_case("bad", lambda f, im: _truncated(f, im, ".png")), r"cannot read .*bad\.png"),
    "text named tif": (_image_case("bad", lambda f, im: (f / "bad.tif").write_text("not an image")),
                       r"cannot read .*bad\.tif"),
    "empty png": (_image_case("bad", lambda f, im: (f / "bad.png").write_bytes(b"")), r"cannot read .*bad\.png"),
    "3d stack": (_image_case("bad", lambda f, im: tifffile.imwrite(f / "bad.tif", np.stack([im] * 3 + [im]).reshape(2, 2, 64, 64))),
                 r"bad\.tif: expected a 2D image"),
    "nan image": (_image_case("bad", lambda f, im: tifffile.imwrite(f / "bad.tif", np.full((64, 64), np.nan, np.float32))),
                  r"bad\.tif: image contains NaN"),
    "values beyond float32": (_image_case("bad", lambda f, im: tifffile.imwrite(f / "bad.tif", im * 1e296)),
                              r"bad\.tif: image values reach [0-9.]+e\+\d+, beyond what float32 holds"),
    "boolean image": (_image_case("bad", lambda f, im: tifffile.imwrite(f / "bad.tif", im > im.mean())),
                      r"bad\.tif: expected a numeric image"),
    "complex image": (_image_case("bad", lambda f, im: tifffile.imwrite(f / "bad.tif", im.astype(np.complex64))),
                      r"bad\.tif: expected a numeric image"),
    "tiny image": (_image_case("bad", lambda f, im: tifffile.imwrite(f / "bad.tif", im[:4, :4])), r"bad\.tif: .*too small"),
    "empty folder": (lambda root, case: _rank(root, images=case), r"no images .* in .*empty_folder"),
    "missing folder": (lambda root, case: _rank(root, images=case / "nowhere"), r"images folder .*nowhere does not exist"),
    # labels
    "negative labels": (_labels_case(lambda p, lab: tifffile.imwrite(p, lab.astype(np.int32) - 1)), r"\.tif: label image has negative"),
    "fractional labels": (_labels_case(lambda p, lab: tifffile.imwrite(p, lab.astype(np.float32) + 0.5)), r"\.tif: label image has non-integer"),
    "labels of another shape": (_labels_case(lambda p, lab: tifffile.imwrite(p, lab[:32])), r"\.tif: label shape \(32, 64\)"),
    "rgb labels": (_labels_case(lambda p, lab: tifffile.imwrite(p, np.stack([lab] * 3, axis=-1))), r"\.tif: label images must be single-channel"),
    "truncated labels": (_labels_case(lambda p, lab: (tifffile.imwrite(p, lab, compression="zlib"),
                                                      p.write_bytes(p.read_bytes()[:300]))), r"cannot read .*\.tif"),
    "missing labels": (_labels_case(lambda p, lab: None), r"labels missing for stems"),
    # bank YAML
    "bank not yaml": (_bank_case("models: [name: a\n  kind: {\n"), r"bank file .*bank\.yaml is not valid YAML"),
    "bank key misspelt": (_bank_case(BANK.replace("models:", "modles:") + "models:\n  - {name: a, kind: unet, pretrained: demo/near_target}\n"),
                          r"bank\.yaml: unknown key\(s\) \['modles'\]"),
    "threshold 1.5": (_bank_case(BANK + "    threshold: 1.5\n"), r"bank\.yaml: models\[0\] \('near_target'\): `threshold: 1.5` must be a number"),
    "threshold high": (_bank_case(BANK + "    threshold: high\n"), r"`threshold: 'high'` must be a number from 0 to 1"),
    "threshold misspelt": (_bank_case(BANK + "    threshhold: 0.5\n"), r"unknown setting `threshhold` for a unet model; did you mean `threshold`"),
    "percentiles reversed": (_bank_case(BANK + "    percentiles: [99, 1]\n"), r"`percentiles: \[99, 1\]` must be \[low, high\]"),
    "batch size 0": (_bank_case(BANK + "    batch_size: 0\n"), r"`batch_size: 0` must be a whole number"),
    "tile_size 0": (_bank_case(BANK + "    tile_size: 0\n"), r"`tile_size: 0` must be a whole number of pixels >= 16"),
    "unknown kind": (_bank_case(BANK.replace("kind: unet", "kind: keras")), r"models\[0\] \('near_target'\) has unknown kind 'keras'"),
    "entry without name": (_bank_case("models:\n  - kind: unet\n    pretrained: demo/near_target\n"), r"models\[0\] lacks name"),
    "path and pretrained": (_bank_case(BANK + "    path: x.pt\n"), r"needs exactly one of `path` or `pretrained`"),
    "duplicate names": (_bank_case(BANK + BANK.replace("models:\n", "")), r"duplicate model names \['near_target'\]"),
    "trust_code not a bool": (_bank_case(BANK + "    trust_code: yes please\n"), r"`trust_code` must be true or false"),
    "bank task unknown": (_bank_case("task: neurons\n" + BANK), r"bank\.yaml: unknown task 'neurons'; choose from"),
    "bank task not a name": (_bank_case("task: [nuclei]\n" + BANK), r"bank\.yaml: `task:` must be a name"),
    "no models": (_bank_case("models: []\n"), r"bank\.yaml: expected a non-empty list under the key `models:`"),
    "missing bank": (lambda root, case: _rank(root, bank=case / "none.yaml"), r"bank file .*none\.yaml does not exist"),
    # options
    "boundary -1": (_option_case("--boundary", "-1", "--consistency", "instance"), r"boundary must be a whole number >= 0, got -1"),
    "n-pert 0": (_option_case("--n-pert", "0"), r"n_pert must be a whole number >= 1, got 0"),
    "unknown layer": (_option_case("--perturbation", "dropout:0.2@nosuch"), r"no layer is called 'nosuch'"),
    "dropout rate 1": (_option_case("--perturbation", "dropout:1.0"), r"dropout rate must be in \[0, 1\)"),
    "unreadable strength": (_option_case("--perturbation", "noise:abc"), r"cannot read the strength in perturbation 'noise:abc'"),
    "export is a folder": (_option_case("--export", "{case}"), r"--export .*export_is_a_folder is a folder"),
    "summary is the store": (lambda root, case: _rank(root, "--summary", str(root / "results.sqlite")),
                             r"--summary and --out \(the result store\) are the same path"),
    "plot without labels": (_option_case("--plot", "{case}/p.png"), r"--plot needs --labels"),
    "export is the bank": (lambda root, case: _rank(root, "--export", str(root / "bank.yaml")), r"--export .*bank\.yaml is the bank file"),
    "out is a folder": (lambda root, case: _rank(root, out=case), r"--out \(the result store\) .*out_is_a_folder is a folder"),
    # sweep configs
    "consistencies 5": (_sweep_case(SWEEP + "perturbations: [gamma:0.7]\nconsistencies: 5\n"), r"sweep\.yaml: `consistencies` must be a list"),
    "seed not a number": (_sweep_case(SWEEP + "perturbations: [gamma:0.7]\nseed: abc\n"), r"sweep\.yaml: seed must be a whole number, got 'abc'"),
    "boundary in a sweep": (_sweep_case(SWEEP + "perturbations: [gamma:0.7]\nboundary: -2\n"), r"sweep\.yaml: boundary must be a whole number >= 0"),
    "strengths not numbers": (_sweep_case(SWEEP + "perturbations:\n  - {{kind: gamma, strengths: [x]}}\n"), r"perturbations\[0\]\.strengths must be numbers"),
    "sweep key misspelt": (_sweep_case(SWEEP + "perturbation: [gamma:0.7]\n"), r"sweep\.yaml: unknown key\(s\) \['perturbation'\]"),
    "sweep task not a name": (_sweep_case(SWEEP + "task: 5\n"), r"sweep\.yaml: `task` must be a name"),
    "no perturbations": (_sweep_case(SWEEP + "perturbations: []\n"), r"`perturbations` must be a non-empty list"),
    "max_images 0": (_sweep_case(SWEEP + "    max_images: 0\nperturbations: [gamma:0.7]\n"), r"targets\[0\]\.max_images must be a whole number >= 1"),
    "sweep target folder missing": (_sweep_case(SWEEP.replace("{root}/images", "{root}/nowhere") + "perturbations: [gamma:0.7]\n"),
                                    r"images folder .*nowhere does not exist"),
    # result stores
    "store is a csv": (_store_case(lambda p, good: p.write_text("model,image,cte\n")), r"store\.sqlite is not a cte_kit result store"),
    "store of another program": (_store_case(_foreign_sqlite), r"store\.sqlite is an SQLite file of another kind"),
    "store of a newer kit": (_store_case(_newer_schema), r"store\.sqlite was written by a newer cte_kit"),
    "store with corrupt pages": (_store_case(_corrupt_copy), r"store\.sqlite: .*(malformed|not a database).*corrupt"),
    # other commands
    "compare out is a file": (lambda root, case: ["compare", "--bank", str(root / "bank.yaml"), "--targets", str(root), "--out",
                                                  str(root / "bank.yaml"), "--no-progress"], r"compare --out .*bank\.yaml is a file"),
    "qc out is the images folder": (lambda root, case: ["qc", "--bank", str(root / "bank.yaml"), "--model", "near_target",
                                                        "--images", str(root / "images"), "--out", str(root / "images"),
                                                        "--no-progress"], r"qc --out .*images is the images folder"),
    "qc store is the bank": (lambda root, case: ["qc", "--bank", str(root / "bank.yaml"), "--model", "near_target",
                                                 "--images", str(root / "images"), "--out", str(case / "qc"), "--store",
                                                 str(root / "bank.yaml"), "--no-progress"],
                             r"--store \(the result store\) .*bank\.yaml is the bank file"),
    "train out is a folder": (lambda root, case: ["train", "--images", str(root / "images"), "--labels", str(root / "labels"),
                                                  "--task", "semantic", "--out", str(case), "--no-progress"],
                              r"--out \(the checkpoint\) .*train_out_is_a_folder is a folder"),
}


def test_every_malformed_input_is_bad_input_and_changes_nothing(kit, tmp_path, capsys):
    root, store = kit
    protected = [store, root / "bank.yaml", root / "images", root / "labels"]
    before = _checksums(*protected)
    backup = tmp_path / "backup"
    shutil.copytree(root, backup)
    failures = []
    for case, (make, message) in CATALOGUE.items():
        folder = tmp_path / re.sub(r"\W+", "_", case)
        folder.mkdir()
        argv = make(root, folder)
        written = _checksums(folder)
        capsys.readouterr()
        try:
            code = main(argv)
        except BaseException as error:  # noqa: BLE001 - whatever escapes main() is a finding of the catalogue
            code = f"raised {type(error).__name__}: {error}"
        err = capsys.readouterr().err
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if not re.search(message, err):
            problems.append(f"message {err.strip()[-300:]!r} does not match {message!r}")
        if "Traceback" in err:
            problems.append("printed a traceback")
        if _checksums(*protected) != before:
            problems.append("changed an earlier result")
            shutil.rmtree(root)
            shutil.copytree(backup, root)  # the next cases start from the earlier results again
        if {p: c for p, c in _checksums(folder).items() if p in written} != written:
            problems.append("changed its own input")
        if problems:
            failures.append(f"{case}: {'; '.join(problems)}")
    assert not failures, f"{len(failures)} of {len(CATALOGUE)} cases:\n" + "\n".join(failures)


def test_suspicious_labels_are_named_and_still_scored(kit, tmp_path, capsys, warnings_shown):
    root, _ = kit
    labels = tmp_path / "labels"
    shutil.copytree(root / "labels", labels)
    files = sorted(labels.iterdir())
    tifffile.imwrite(files[0], (tifffile.imread(files[0]) > 0).astype(np.uint8) * 255)  # a 0/255 mask
    tifffile.imwrite(files[1], np.zeros((64, 64), np.uint16))
    assert main(_rank(root, "--labels", str(labels), "--consistency", "instance", out=tmp_path / "r.sqlite")) == 0
    err = capsys.readouterr().err
    assert f"1 label image(s) are masks, not instance labels: {files[0].name} (value 255)" in err
    assert f"1 label image(s) hold no object: {files[1].name}" in err


def test_ctrl_c_is_a_short_message_and_keeps_what_was_written(kit, tmp_path, monkeypatch, capsys):
    import cte_kit.evaluation.sweep as sweep

    root, _ = kit
    out = tmp_path / "r.sqlite"
    shutil.copy(root / "results.sqlite", out)
    before = _checksums(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupted)
    try:
        code = main(_rank(root, out=out))
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err and _checksums(out) == before


def test_a_store_in_a_read_only_folder_is_named_read_only(kit, tmp_path, capsys):
    import os

    root, _ = kit
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(root / "results.sqlite", folder / "results.sqlite")
    folder.chmod(0o555)  # read-only for a user; root writes anyway, and needs the immutable attribute
    immutable = os.access(folder, os.W_OK)
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("running as root without chattr +i: no read-only folder can be made here")
    try:
        before = _checksums(folder / "results.sqlite")
        assert main(_rank(root, out=folder / "results.sqlite")) == 2
        assert "cannot be written (a read-only file or folder)" in capsys.readouterr().err
        assert _checksums(folder / "results.sqlite") == before
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)
